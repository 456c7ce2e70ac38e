"""Every stage's config refuses a bad value when it is constructed, before any work.

``RunConfig`` builds the configs of the stages it runs (plan, fine-tuning, retraining-free), so a
value one of them refuses is refused by ``sensibert run`` before a model is read.
"""

from __future__ import annotations

import pytest

from toolchain.errors import InputError
from toolchain.export import ExportConfig
from toolchain.finetune import FinetuneConfig
from toolchain.pipeline import RunConfig
from toolchain.plan import PlanConfig

RUN_BAD = [
    ({"task": "nope"}, "unknown task"), ({"keep": 0.0}, "--keep"), ({"keep": 1.5}, "--keep"),
    ({"keep": 0.5, "params": 10}, "at most one"), ({"params": 0}, "--params"), ({"flops": -5}, "--flops"),
    ({"seq_len": 0}, "--seq-len"), ({"batch_size": 0}, "--batch-size"), ({"max_length": 4}, "--max-length"),
    ({"sensitivity_steps": 0}, "--sensitivity-steps"), ({"bench_runs": 0}, "--bench-runs"), ({"seed": -1}, "--seed"),
    ({"max_train_samples": 0}, "--max-train-samples"), ({"latency_ms": 0}, "--latency-ms"),
    ({"min_keep": 1.5}, "--min-keep"), ({"round_to": 0}, "--round-to"), ({"precision": "fp16"}, "--precision"),
    ({"train_from": "test"}, "--train-from"), ({"epochs": 0}, "--epochs"), ({"lr": -1.0}, "--lr"),
    ({"distill_hidden": -1.0}, "--distill-hidden"), ({"calibration_samples": 0}, "--calibration-samples"),
    ({"method": "magic"}, "unknown"), ({"allocation": "magic"}, "unknown allocation"),
    ({"vocab": "tiny"}, "--vocab"), ({"int8_variant": "int4"}, "int8"), ({"max_attempts": 0}, "--max-attempts"),
    ({"teacher": ""}, "--teacher"), ({"doc_stride": 200}, "--doc-stride"),
    ({"holdout_by": "nope"}, "holdout|carve|key"), ({"eval_fraction": 1.0, "holdout_by": "sentence"}, "eval-fraction"),
    ({"validation_fraction": 1.0}, "--validation-fraction 1.0 leaves no training data"),
    ({"validation_fraction": -0.1}, "--validation-fraction"), ({"validation_fraction": "0.1"}, "--validation-fraction"),
    ({"qat": True, "precision": "fp32"}, "--qat trains the model for its int8 file"),
    ({"qat": True, "int8_variant": "static-qdq"}, "no fake-quant equivalent"),
    ({"qat": True, "finetune": False}, "retraining-free mode trains nothing"),
]


@pytest.mark.parametrize("kwargs, match", RUN_BAD, ids=[next(iter(k)) + f"-{i}" for i, (k, _) in enumerate(RUN_BAD)])
def test_run_config_refuses_bad_values_at_construction(kwargs, match, tmp_path):
    with pytest.raises(InputError, match=match):
        RunConfig(out=str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"warmup_ratio": 1.0},
                                    {"distill_alpha": 1.5}, {"temperature": 0.0}, {"distill_hidden": -0.1},
                                    {"ramp_fraction": 2.0}, {"importance": "magic"}, {"ema_decay": 1.0},
                                    {"logging_steps": 0}])
def test_finetune_config_refuses_bad_values(kwargs):
    with pytest.raises(InputError):
        FinetuneConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"opset": "17"}, {"quantize": "int4"}, {"int8_preset": "x"}, {"int8_variant": "x"},
                                    {"calibration_samples": 0}, {"seq_len": 0}, {"task_kind": "triple"},
                                    {"fp32_atol": 0.0}, {"int8_min_agreement": 1.5}])
def test_export_config_refuses_bad_values(kwargs):
    with pytest.raises(InputError):
        ExportConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"allocation": "magic"}, {"min_keep": -0.1}, {"min_keep": 2}, {"round_to": 0}])
def test_plan_config_refuses_bad_values(kwargs):
    with pytest.raises(InputError):
        PlanConfig(**kwargs)


def test_good_defaults_construct():
    RunConfig(out="x")
    FinetuneConfig()
    ExportConfig()
    PlanConfig()


def test_cli_run_refuses_before_any_work(tmp_path, capsys):
    from toolchain.cli import main

    out = tmp_path / "out"
    assert main(["run", "--out", str(out), "--min-keep", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --min-keep 1.5 is out of range") and not out.exists()
