"""Strict inputs: damaged weights and unwritable outputs are one line before any work, and every
stage config refuses a bad value at construction with the same error type."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from toolchain.errors import InputError


def _cli(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SENSIBERT_DATA_DIR"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    line = [x for x in res.stderr.splitlines() if x.strip()][-1]
    assert line.startswith("error: ") and all(n in line for n in needles), line
    return line


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_damaged_safetensors_is_refused_before_work(tiny_bert_dir, tmp_path, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a model",
                         "header": data[:8] + b"{broken" + data[15:]}[damage])
    out = tmp_path / "out"
    for command in (("run", "--model", model, "--out", out), ("analyze", "--model", model, "--task", "sst2",
                                                                "--out", out / "s.json")):
        _one_line_error(_cli("toolchain", *command), "model.safetensors", "damaged")
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ("toolchain", "run", "--out", "{file}/run"),
    ("toolchain", "analyze", "--task", "sst2", "--out", "{file}/sub/s.json"),
    ("toolchain", "export", "{model}", "--out", "{file}/onnx"),
    ("toolchain", "plan", "--sensitivity", "{file}", "--profile", "rpi4", "--out", "{file}/p.json"),
    ("deploy", "calibrate", "--profile", "rpi4-4gb", "--out", "{file}/p.yaml"),
    ("toolchain", "shrink", "{model}", "--out", "{file}/small"),
    ("toolchain", "finetune", "--task", "sst2", "--plan", "{file}", "--out", "{file}/ft"),
    ("toolchain", "sweep", "--budgets", "0.5", "--out", "{file}/sweep"),
    ("deploy", "bench", "{file}", "--profile", "rpi4-4gb", "--out", "{file}/b.json"),
    ("deploy", "ops", "{file}", "--out", "{file}/ops.json"),
])
def test_out_under_a_regular_file_is_one_line(tiny_bert_dir, tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    module, *args = command
    args = [a.format(file=blocker, model=tiny_bert_dir) for a in args]
    _one_line_error(_cli(module, *args), "is a file, not a folder")
    assert blocker.read_text() == "not a folder"


def _configs():
    from deploy.calibrate import CalibrateConfig
    from deploy.measure import BenchConfig
    from deploy.predict import PredictConfig
    from toolchain.tasks import CarveConfig
    from toolchain.export import ExportConfig
    from toolchain.finetune import FinetuneConfig
    from toolchain.masks import RampConfig
    from toolchain.pipeline import RunConfig
    from toolchain.plan import PlanConfig
    from toolchain.retrain_free import RetrainFreeConfig
    from toolchain.sensitivity import SensitivityConfig

    return [
        (FinetuneConfig, {"epochs": 0}), (FinetuneConfig, {"lr": -1}), (FinetuneConfig, {"temperature": 0}),
        (ExportConfig, {"opset": "17"}), (ExportConfig, {"quantize": "int4"}), (ExportConfig, {"task_kind": "x"}),
        (RampConfig, {"ramp_fraction": 2}), (PlanConfig, {"min_keep": 2}), (PlanConfig, {"round_to": 0}),
        (RetrainFreeConfig, {"samples": 0}), (SensitivityConfig, {"density": 2}), (SensitivityConfig, {"steps": 0}),
        (BenchConfig, {"runs": 0}), (PredictConfig, {"batch_size": 0}), (CalibrateConfig, {"runs": 0}),
        (CarveConfig, {"by": "question", "eval_fraction": 1.5}), (CarveConfig, {"by": ""}),
        (RunConfig, {"out": "x", "epochs": 0}), (RunConfig, {"out": "x", "lr": -1}),
        (RunConfig, {"out": "x", "task": "squad", "max_length": 64, "doc_stride": 64}),
        (RunConfig, {"out": "x", "train_from": "dev"}),
    ]


@pytest.mark.parametrize("index", range(21))
def test_every_stage_config_refuses_bad_values_with_input_error(index):
    cls, bad = _configs()[index]
    with pytest.raises(InputError) as info:
        cls(**bad)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def exported(tiny_bert_dir, tmp_path_factory):
    """A real artifact and the run files around it, made once: export of a trimmed tiny model."""
    from test_shrink import make_shrunk_dir  # noqa: E402  (tests/ is on sys.path)
    from toolchain.export import ExportConfig, export

    root = tmp_path_factory.mktemp("strict")
    export(make_shrunk_dir(tiny_bert_dir, root, seed=3), root / "art", ExportConfig(seq_len=32))
    from toolchain.plan import dense_plan
    from toolchain.sensitivity import model_shape
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(root / "masked"))
    dense_plan(model_shape(model)).save(root / "small" / "plan.json")
    from test_plan import make_sens  # noqa: E402

    make_sens(model_shape(model)).save(root / "small" / "sensitivity.json")
    return root


DAMAGES = {"truncate": lambda data: data[: len(data) // 2],
           "garbage": lambda data: bytes((b * 31 + 7) % 256 for b in data),   # same length, no structure
           "wrong-shape": lambda data: b"[1, 2, 3]\n" if data[:1] in (b"{", b"[") else data[:16] + data[-16:]}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("name", ["plan.json", "masks.json", "sensibert.json", "tokenizer.json", "model.onnx",
                                  "sensitivity.json"])
def test_every_reader_refuses_a_damaged_file_in_one_line(exported, tmp_path, name, damage):
    """A file cut in half, overwritten with noise, or valid JSON of the wrong shape gives one
    SensibertError line naming it, whichever reader meets it."""
    from deploy.errors import SensibertError
    from deploy.manifest import read_manifest
    from toolchain.inspect_artifact import load_onnx
    from toolchain.masks import MaskSet
    from toolchain.models import load_tokenizer
    from toolchain.plan import Plan

    from toolchain.sensitivity import Sensitivity

    where = {"plan.json": "small", "masks.json": "small", "sensibert.json": "art", "tokenizer.json": "small",
             "model.onnx": "art", "sensitivity.json": "small"}[name]
    folder = tmp_path / where
    shutil.copytree(exported / where, folder)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(DAMAGES[damage](data))
    read = {"plan.json": lambda: Plan.load(folder / name), "masks.json": lambda: MaskSet.load(folder / name),
            "sensibert.json": lambda: read_manifest(folder), "tokenizer.json": lambda: load_tokenizer(folder),
            "model.onnx": lambda: load_onnx(folder / name),
            "sensitivity.json": lambda: Sensitivity.load(folder / name)}[name]
    with pytest.raises(SensibertError) as info:
        read()
    message = str(info.value)
    assert "\n" not in message and name in message and ";" in message


@pytest.mark.parametrize("module, args, needle", [
    ("toolchain", ["export", "x", "--out", "y", "--int8-variant", "awq"], "invalid choice: 'awq'"),
    ("toolchain", ["plan", "--keep", "half"], "--keep: invalid float value"),
    ("toolchain", ["frobnicate"], "invalid choice: 'frobnicate'"),
    ("deploy", ["bench"], "required: artifact, --profile"),
    ("deploy", ["predict", "x", "--batch-size", "0"], "--batch-size"),
], ids=["choice", "type", "command", "required", "range"])
def test_usage_errors_are_one_line_naming_the_help(module, args, needle):
    """argparse's own refusals read like every other error: one line, exit 2, where to look next."""
    res = _cli(module, *args, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("error: ") and needle in res.stderr and "--help'" in res.stderr, res.stderr
