"""sensibert's device side: run and measure an exported artifact with onnxruntime, no torch.

Importing ``deploy`` is cheap (standard library only); the names below load their module on
first use. The verbs live in their modules (``deploy.measure.measure``,
``deploy.predict.predict``, ``deploy.calibrate.calibrate``) because their names are also
the module names.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DeployError": "deploy.errors", "InputError": "deploy.errors", "SensibertError": "deploy.errors",
    "DeviceProfile": "deploy.profile", "load_profile": "deploy.profile",
    "Manifest": "deploy.manifest", "read_manifest": "deploy.manifest", "write_manifest": "deploy.manifest",
    "open_session": "deploy.session", "SessionSettings": "deploy.session",
    "Predictor": "deploy.predict", "PredictConfig": "deploy.predict",
    "BenchConfig": "deploy.measure", "BenchResult": "deploy.measure", "CheckReport": "deploy.measure",
    "CalibrateConfig": "deploy.calibrate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'deploy' has no attribute {name!r}")
