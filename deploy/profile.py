"""Device profiles: one YAML file per device, loaded into a frozen, validated ``DeviceProfile``.

This is the only copy of the profile code; the toolchain imports it. Derived budgets (what
model fits) live in ``toolchain.budget``: they need the cost model, which is not device code.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from deploy.int8 import INT8_VARIANTS
from deploy.errors import InputError

SCHEMA = "sensibert.device_profile"
VERSION = 1
PRECISIONS = ("fp32", "int8")
STATUSES = ("supported", "experimental", "infeasible")
EXECUTION_MODES = ("sequential", "parallel")
LATENCY_MEASURES = ("fixed", "real")
# Evidence tags, as in shared/research/device_profiles.md: measured, spec sheet, derived, estimate.
SOURCE_TAGS = ("[M]", "[S]", "[D]", "[E]")


@dataclass(frozen=True)
class Hardware:
    """What the board is; figures the budget does not use are documentation."""

    cpu: str
    isa: str
    cores: int
    ram_bytes: int
    ram_available_bytes: int
    features: tuple[str, ...] = ()
    soc: str = ""
    accelerators: str = ""


@dataclass(frozen=True)
class Calibration:
    """Timings of the matrix-multiply probe on the device (written by ``deploy calibrate``)."""

    probe: str
    fp32_ms: float
    int8_ms: float
    threads: int
    onnxruntime: str = ""
    measured_on: str = ""


@dataclass(frozen=True)
class Compute:
    """Sustained end-to-end encoder rates (GFLOP/s with a multiply-add counted as 2)."""

    sustained_gflops_fp32: float
    sustained_gops_int8: float
    peak_gflops_fp32: Optional[float] = None   # Optional, not `X | None`: get_type_hints evaluates
    calibration: Optional[Calibration] = None  # these, and Python 3.9 has no `|` on types
    # measured sub-layer latencies (deploy.latency_table), a JSON file beside the profile
    latency_table: Optional[str] = None

    def sustained(self, precision: str) -> float:
        """Return the sustained rate for a precision, in GFLOP/s."""
        return self.sustained_gflops_fp32 if precision == "fp32" else self.sustained_gops_int8


@dataclass(frozen=True)
class Runtime:
    """onnxruntime settings the device runs with; they map 1:1 onto SessionOptions."""

    intra_op_threads: int
    inter_op_threads: int = 1
    execution_mode: str = "sequential"
    precision: str = "fp32"
    enable_cpu_mem_arena: bool = True
    session_config: Mapping[str, str] = field(default_factory=dict)
    # the int8 variant the exporter ships for this device (deploy.int8.INT8_VARIANTS); chosen
    # by measurement where the device was measured, else the exporter's default
    int8_variant: Optional[str] = None
    # onnxruntime graph rewrites to skip (None: deploy.session.DISABLED_OPTIMIZERS; [] for none)
    disabled_optimizers: Optional[tuple[str, ...]] = None


@dataclass(frozen=True)
class ResidentFactor:
    """Resident memory per byte of weights (onnxruntime keeps pre-packed copies unless disabled)."""

    fp32: float
    int8: float


@dataclass(frozen=True)
class BudgetSettings:
    """What the model must meet on this device."""

    seq_len: int
    batch: int
    latency_target_ms: float
    model_memory_fraction: float
    runtime_overhead_bytes: int
    resident_factor: ResidentFactor
    # extra memory held only while onnxruntime creates the session (graph copies, optimisation)
    load_transient_bytes: Optional[int] = None
    # what the latency target is judged on: "fixed" (inputs padded to seq_len) or "real" (the
    # task's dev inputs at their own lengths, batch 1: what users of short-text tasks see)
    latency_measure: str = "fixed"


@dataclass(frozen=True)
class DeviceProfile:
    """A named edge device: hardware, compute rates, runtime settings and budget."""

    id: str
    name: str
    device_class: str
    status: str
    hardware: Hardware
    compute: Compute
    runtime: Runtime
    budget: BudgetSettings
    sources: Mapping[str, str]
    aliases: tuple[str, ...] = ()
    notes: str = ""
    path: str = ""

    @property
    def model_memory_bytes(self) -> int:
        """Return the memory the model's process may use: RAM available to the app × share."""
        return int(self.hardware.ram_available_bytes * self.budget.model_memory_fraction)

    def to_dict(self) -> dict[str, Any]:
        """Return the profile as the YAML mapping it was read from."""
        doc = dataclasses.asdict(self)
        doc.pop("path")
        doc["class"] = doc.pop("device_class")
        return {"schema": SCHEMA, "version": VERSION, **doc}


# ---------------------------------------------------------------- loading and validation

_YAML_KEYS = {"class": "device_class"}
_YAML11_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE]\d+")


def profiles_dir() -> Path | None:
    """Return the folder of shipped profiles (the ``device_profiles`` package), None if not installed.

    The device-only install (``pip install ./deploy``) ships no profiles: there, a profile is a
    file, such as the ``profile.yaml`` every artifact carries.
    """
    try:
        return Path(str(resources.files("device_profiles")))
    except ModuleNotFoundError:
        return None


def known_profiles() -> dict[str, Path]:
    """Return shipped profile ids mapped to their files, sorted by id."""
    folder = profiles_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder else {}


def _aliases() -> dict[str, str]:
    """Return short names (``rpi4``) mapped to profile ids, read from the shipped files."""
    out = {}
    for name, path in known_profiles().items():
        doc = yaml.safe_load(path.read_text()) or {}
        for alias in doc.get("aliases", []) if isinstance(doc, dict) else []:
            out[str(alias)] = name
    return out


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """Load a shipped profile by id, or a user's profile file by path."""
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix in (".yaml", ".yml") or os.sep in text or path.is_file()):
        known = known_profiles()
        if text not in known:
            text = _aliases().get(text, text)
        if not known:
            raise InputError(f"unknown device profile {text!r}: this install ships no profiles; pass a "
                             "profile file (every artifact carries its profile.yaml)")
        if text not in known:
            raise InputError(f"unknown device profile {text!r}; choose one of: {', '.join(known)} "
                             "(or pass the path of a profile file)")
        path = known[text]
    if not path.is_file():
        raise InputError(f"{path}: profile file not found; pass a profile id or an existing file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}:{where} YAML syntax error ({getattr(exc, 'problem', exc)}); "
                         "fix the file") from None
    return profile_from_dict(doc, str(path))


def profile_from_dict(doc: Any, origin: str = "<profile>") -> DeviceProfile:
    """Validate a parsed profile mapping; every problem names the file and the field."""
    if not isinstance(doc, dict):
        raise InputError(f"{origin}: a profile must be a YAML mapping; see device_profiles/rpi4-4gb.yaml")
    doc = dict(doc)
    if doc.pop("schema", SCHEMA) != SCHEMA:
        raise InputError(f"{origin}: field 'schema' must be {SCHEMA!r}")
    if doc.pop("version", VERSION) != VERSION:
        raise InputError(f"{origin}: field 'version' must be {VERSION} (this sensibert reads version 1)")
    profile = _build(DeviceProfile, doc, origin, "", exclude={"path"})
    profile = dataclasses.replace(profile, path=origin)
    _check_semantics(profile, origin)
    return profile


def _build(cls: type, doc: Any, origin: str, prefix: str, exclude: frozenset | set = frozenset()):
    if not isinstance(doc, dict):
        raise InputError(f"{origin}: field '{prefix.rstrip('.') or '<top>'}' must be a mapping")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)} - set(exclude)
    given = {_YAML_KEYS.get(k, k): v for k, v in doc.items()}
    reverse = {v: k for k, v in _YAML_KEYS.items()}
    unknown = sorted(set(given) - names)
    if unknown:
        raise InputError(f"{origin}: unknown field '{prefix}{unknown[0]}'; known fields here: "
                         f"{', '.join(sorted(reverse.get(n, n) for n in names))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in names:
            continue
        key = prefix + reverse.get(f.name, f.name)
        if f.name not in given:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(f"{origin}: missing field '{key}'; add it (see device_profiles/rpi4-4gb.yaml)")
            continue
        kwargs[f.name] = _coerce(hints[f.name], given[f.name], origin, key)
    return cls(**kwargs)


# typing.Union, and on Python 3.10+ the `X | Y` union type too (Python 3.9 has no types.UnionType)
_UNION_TYPES = (Union,) + ((types.UnionType,) if hasattr(types, "UnionType") else ())


def _coerce(tp: Any, value: Any, origin: str, key: str) -> Any:
    origin_tp = get_origin(tp)
    if origin_tp in _UNION_TYPES:
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, origin, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, origin, key + ".")
    if origin_tp is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{origin}: field '{key}' must be a list of strings, got {value!r}")
        return tuple(value)
    if tp is Mapping[str, str] or origin_tp in (dict, Mapping) or str(tp).startswith("typing.Mapping"):
        if not isinstance(value, dict):
            raise InputError(f"{origin}: field '{key}' must be a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{origin}: field '{key}' must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            value = float(value)  # PyYAML reads 5.0e7 (no exponent sign) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{origin}: field '{key}' must be a number, got {value!r}")
        if tp is int and float(value) != int(value):
            raise InputError(f"{origin}: field '{key}' must be a whole number, got {value!r}")
        if value <= 0:
            raise InputError(f"{origin}: field '{key}' must be positive, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{origin}: field '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported profile field type {tp}")  # a bug in this module, not user input


def _figure_keys(obj: Any, prefix: str = "") -> list[str]:
    """Return dotted keys of every numeric figure in hardware, compute and budget."""
    out = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, Calibration):
            out += _figure_keys(value, key + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(key)
    return out


def _check_semantics(p: DeviceProfile, origin: str) -> None:
    def bad(key: str, msg: str) -> InputError:
        return InputError(f"{origin}: field '{key}' {msg}")

    if p.status not in STATUSES:
        raise bad("status", f"must be one of {', '.join(STATUSES)}, got {p.status!r}")
    if p.runtime.precision not in PRECISIONS:
        raise bad("runtime.precision", f"must be one of {', '.join(PRECISIONS)}, got {p.runtime.precision!r}")
    if p.runtime.int8_variant is not None and p.runtime.int8_variant not in INT8_VARIANTS:
        raise bad("runtime.int8_variant", f"must be one of {', '.join(INT8_VARIANTS)}, got {p.runtime.int8_variant!r}")
    if p.budget.latency_measure not in LATENCY_MEASURES:
        raise bad("budget.latency_measure", f"must be one of {', '.join(LATENCY_MEASURES)}, "
                  f"got {p.budget.latency_measure!r}")
    if p.runtime.execution_mode not in EXECUTION_MODES:
        raise bad("runtime.execution_mode", f"must be one of {', '.join(EXECUTION_MODES)}, "
                  f"got {p.runtime.execution_mode!r}")
    if p.hardware.ram_available_bytes > p.hardware.ram_bytes:
        raise bad("hardware.ram_available_bytes", "cannot exceed hardware.ram_bytes")
    if p.budget.model_memory_fraction > 1:
        raise bad("budget.model_memory_fraction", f"must be at most 1, got {p.budget.model_memory_fraction}")
    figures = [f"hardware.{k}" for k in _figure_keys(p.hardware)]
    figures += [f"compute.{k}" for k in _figure_keys(p.compute)]
    figures += [f"budget.{k}" for k in _figure_keys(p.budget)]
    for key in figures:
        source = p.sources.get(key)
        if source is None:
            raise bad(f"sources.{key}", "is missing: every figure needs a source or an [E] estimate tag")
        if not source.startswith(SOURCE_TAGS):
            raise bad(f"sources.{key}", f"must start with one of {' '.join(SOURCE_TAGS)}, got {source!r}")
