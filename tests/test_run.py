"""End-to-end `sensibert run` on a tiny random BERT and a small slice of data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.int8 import DEFAULT_VARIANT
from deploy.manifest import read_manifest

FAST = ["--task", "sst2", "--max-train-samples", "64", "--max-eval-samples", "32", "--epochs", "1",
        "--batch-size", "16", "--sensitivity-steps", "4", "--bench-runs", "3", "--max-length", "32",
        "--keep", "0.5", "--precision", "int8"]


def _run(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    environ = {**os.environ, "SENSIBERT_DATA_DIR": "", **(env or {})}
    environ.pop("SENSIBERT_DATA_DIR")  # the demo set: no dependence on ../shared
    return subprocess.run([sys.executable, "-m", "toolchain", "run", *args], capture_output=True, text=True,
                          timeout=timeout, env=environ)


@pytest.fixture(scope="module")
def finished_run(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    result = _run("--model", str(tiny_bert_dir), "--out", str(out), *FAST)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    return out, result


def test_run_writes_checked_artifact(finished_run):
    out, _ = finished_run
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "sensibert.report"
    artifact = Path(report["artifact"])
    manifest = read_manifest(artifact)  # verifies every file's sha256
    assert set(manifest.models) == {"fp32", "int8"}
    for name in ("report.md", "sensitivity.json", "sensitivity.png", "plan.png", "accuracy_latency.png"):
        assert (out / name).is_file(), name
    # the budget holds in the artifact: the plan's kept units, and the ONNX encoder parameters equal the plan's
    plan = json.loads((out / "attempt-1" / "plan.json").read_text())
    assert plan["cost"]["trimmable_params"] <= plan["budget"]["max_trimmable_params"]
    attempt = report["attempts"][0]
    assert report["after"]["heads"] == plan["heads"] and report["after"]["ffn"] == plan["ffn"]
    export = json.loads((out / "state.json").read_text())["stages"]["attempt-1/export"]["result"]
    assert export["encoder_params_onnx"] == export["encoder_params_expected"] == report["after"]["encoder_params"]
    assert attempt["check"]["peak_rss_bytes"] > 0
    # rpi4 is not calibrated: the verdict itself says the latency is an estimate, console and report
    assert "ESTIMATE from the profile's FLOPs rate" in (out / "report.md").read_text().split("\n## ")[0]
    assert "ESTIMATE from the profile's FLOPs rate" in finished_run[1].stdout
    # a quiet console: our lines, no raw metric dictionaries or library warnings
    assert "{'" not in finished_run[1].stdout and "newly initialized" not in finished_run[1].stderr
    # the int8 variant shipped is named: rpi4 (Arm) gets the arm64 preset, the default variant
    assert report["int8"]["variant"] == DEFAULT_VARIANT and report["int8"]["preset"] == "arm64"  # inputs at hand
    assert report["int8"]["chosen_by"]["variant"] == "default"
    assert manifest.extra["int8"] == {"variant": DEFAULT_VARIANT, "preset": "arm64"}
    assert f"int8 variant: **{DEFAULT_VARIANT}**" in (out / "report.md").read_text()
    assert "matmuls smoothed" in (out / "report.md").read_text()  # the default smooths (dynamic-smooth)
    # 64 training inputs, all of them calibrating: no held-out ones to choose α on, and the report says so
    assert "alpha_check" not in report["int8"] and report["int8"]["smoothing"]["alpha"] == 0.9
    assert any("without choosing among" in n for n in report["export_notes"])
    assert "Export notes: int8 smoothed at α 0.9 without choosing among" in (out / "report.md").read_text()
    # the headline number is the shipped file's, fp32 and PyTorch beside it, in the report and on the console
    shipped = report["accuracy"]["trimmed_onnx"]["int8"]
    line = f"dev accuracy of the shipped file (ONNX int8, {DEFAULT_VARIANT}): {100 * shipped:.2f}% (ONNX fp32 "
    assert f"Headline: **{line}" in (out / "report.md").read_text() and line in finished_run[1].stdout


def test_onnx_accuracy_equals_pytorch_accuracy(finished_run):
    out, _ = finished_run
    report = json.loads((out / "report.json").read_text())
    acc = report["accuracy"]
    assert acc["trimmed_onnx"]["fp32"] == pytest.approx(acc["trimmed_pytorch"], abs=1e-9)
    assert acc["dense_onnx"]["fp32"] == pytest.approx(acc["dense_pytorch"], abs=1e-9)


def test_second_run_skips_every_stage(finished_run, tiny_bert_dir):
    out, _ = finished_run
    before = (out / "attempt-1" / "artifact" / "sensibert.json").stat().st_mtime_ns
    data = json.loads((out / "report.json").read_text())["data"]
    result = _run("--model", str(tiny_bert_dir), "--out", str(out), *FAST)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["stages_run"] == []
    assert report["data"] == data and data["eval_rows"] > 0  # split sizes kept though nothing was tokenised
    assert "analyze" in report["stages_skipped"] and "attempt-1/finetune" in report["stages_skipped"]
    assert (out / "attempt-1" / "artifact" / "sensibert.json").stat().st_mtime_ns == before
    assert "[sensibert run] stage analyze: unchanged, skipped" in result.stdout  # our line, not a log warning
    assert "WARNING" not in result.stderr


def test_changed_setting_reruns_from_that_stage(finished_run, tiny_bert_dir):
    out, _ = finished_run
    result = _run("--model", str(tiny_bert_dir), "--out", str(out), *FAST, "--bench-runs", "4")
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert "attempt-1/finetune" in report["stages_skipped"]
    assert "attempt-1/measure" in report["stages_run"]


def test_static_int8_variant_reruns_from_export_and_calibrates_on_training_inputs(finished_run, tiny_bert_dir,
                                                                                  tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished_run[0], out)
    result = _run("--model", str(tiny_bert_dir), "--out", str(out), *FAST, "--int8-variant", "static-qdq")
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert "attempt-1/finetune" in report["stages_skipped"] and "attempt-1/export" in report["stages_run"]
    q = report["int8"]
    assert q["variant"] == "static-qdq" and q["chosen_by"]["variant"] == "flag" and q["calibration_samples"] == 64
    assert report["accuracy"]["trimmed_onnx"]["int8"] is not None
    assert "calibration inputs from the training split" in (out / "report.md").read_text()


def test_qat_phase_reruns_from_shrink_and_ships_its_model(finished_run, tiny_bert_dir, tmp_path):
    import shutil

    out = tmp_path / "qat"
    shutil.copytree(finished_run[0], out)
    result = _run("--model", str(tiny_bert_dir), "--out", str(out), *FAST, "--qat")
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert "attempt-1/finetune" in report["stages_skipped"], (result.stdout[-1500:], result.stderr[-1500:])
    assert {"attempt-1/qat", "dense/qat", "attempt-1/export"} <= set(report["stages_run"])
    record = json.loads((out / "attempt-1" / "qat" / "qat.json").read_text())
    assert record["variant"] == "dynamic-per-channel" and record["distilled"] and record["steps"] > 0
    export = json.loads((out / "attempt-1" / "artifact" / "export.json").read_text())
    assert export["source"].endswith("attempt-1/qat") and report["qat"] is True
    assert "quantisation-aware phase" in (out / "report.md").read_text()


def test_profile_judging_latency_at_real_lengths(finished_run, tiny_bert_dir, tmp_path):
    """budget.latency_measure: real: the check times the dev inputs at their own lengths, the
    report says so, and only the measurement stages rerun."""
    import shutil

    import yaml

    from deploy.profile import load_profile

    doc = yaml.safe_load(Path(load_profile("rpi4-4gb").path).read_text())
    doc["budget"]["latency_measure"] = "real"
    profile = tmp_path / "rpi4-real.yaml"
    profile.write_text(yaml.safe_dump(doc))
    out = tmp_path / "copy"
    shutil.copytree(finished_run[0], out)
    result = _run("--model", str(tiny_bert_dir), "--out", str(out), *FAST, "--profile", str(profile))
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert "attempt-1/finetune" in report["stages_skipped"] and "attempt-1/measure" in report["stages_run"]
    check = report["check"]
    assert check["latency_measure"].startswith("32 real inputs at their own lengths")  # --max-eval-samples 32
    state = json.loads((out / "state.json").read_text())["stages"]["attempt-1/measure"]["result"]["int8"]
    real = state["real_lengths"]
    assert real["inputs"] == 32 and real["tokens_max"] <= 32 and check["latency_estimate_ms"] == real["estimate"][
        "latency_ms"]
    assert "measured on 32 real inputs" in (out / "report.md").read_text()


def test_refuses_folder_of_another_run(finished_run, tmp_path):
    out, _ = finished_run
    other = tmp_path / "other-model"
    import shutil

    shutil.copytree(Path(json.loads((out / "report.json").read_text())["model"]), other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["layer_norm_eps"] = 1e-6
    (other / "config.json").write_text(json.dumps(cfg))
    result = _run("--model", str(other), "--out", str(out), *FAST)
    assert result.returncode == 2 and "holds another run's files" in result.stderr
    assert "Traceback" not in result.stderr


def test_refuses_foreign_folder_and_bad_paths(tiny_bert_dir, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = _run("--model", str(tiny_bert_dir), "--out", str(foreign), *FAST)
    assert result.returncode == 2 and "holds no sensibert run" in result.stderr
    assert (foreign / "notes.txt").read_text() == "mine"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _run("--model", str(tiny_bert_dir), "--out", str(blocker / "out"), *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_infeasible_profile_stops_before_training(tiny_bert_dir, tmp_path, minilm_dir):
    out = tmp_path / "out"
    result = _run("--out", str(out), "--profile", "stm32h743", "--max-train-samples", "32")
    assert result.returncode == 2 and "infeasible" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "sensitivity.json").exists()


def test_unreachable_latency_target_stops_before_training(tiny_bert_dir, tmp_path, minilm_dir):
    """The latency allocation's target and table are checked from the shape before the dense
    fine-tuning: a target below the smallest plan, or a table measured for another width, is
    one line and no stage runs (both used to surface only at the plan, after the dense model)."""
    out = tmp_path / "out"
    result = _run("--out", str(out), "--profile", "host", "--allocation", "latency", "--latency-ms", "0.1",
                  "--max-train-samples", "32")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no model meets 0.1 ms" in result.stderr and "smallest achievable latency" in result.stderr
    assert not (out / "state.json").exists() and not (out / "dense").exists()
    result = _run("--out", str(out), "--model", str(tiny_bert_dir), "--profile", "host", "--allocation", "latency",
                  *FAST[:-4])
    assert result.returncode == 2 and "calibrate a table for this model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (out / "dense").exists()


def test_killed_run_resumes_at_finetune(tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "toolchain", "run", "--model", str(tiny_bert_dir), "--out", str(out),
            *FAST, "--max-train-samples", "400", "--epochs", "20", "--teacher", "none", "--no-dense-baseline"]
    env = {k: v for k, v in os.environ.items() if k != "SENSIBERT_DATA_DIR"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 300
    seen = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if "stage attempt-1/finetune" in line:
            # kill once training is under way: its first epoch checkpoint has appeared
            work = out / "attempt-1" / ".finetuned.checkpoints"
            while time.time() < deadline and not (work.is_dir() and any(work.iterdir())) and proc.poll() is None:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert "stage attempt-1/finetune" in seen
    state = json.loads((out / "state.json").read_text())
    assert state["stages"]["analyze"]["done"] and not state["stages"]["attempt-1/finetune"]["done"]
    assert not (out / "attempt-1" / "finetuned").exists()
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert "analyze" in report["stages_skipped"] and "attempt-1/plan" in report["stages_skipped"]
    assert "attempt-1/finetune" in report["stages_run"]


def test_sweep_shares_analysis_and_writes_pareto(tiny_bert_dir, tmp_path):
    out = tmp_path / "sweep"
    fast = [a for a in FAST if a not in ("--keep", "0.5")]
    env = {k: v for k, v in os.environ.items() if k != "SENSIBERT_DATA_DIR"}
    result = subprocess.run([sys.executable, "-m", "toolchain", "sweep", "--budgets", "0.3,0.7", "--model",
                             str(tiny_bert_dir), "--out", str(out), *fast], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    body = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in body["rows"]] == ["dense", "keep 30%", "keep 70%"]
    assert body["rows"][1]["total_params"] < body["rows"][2]["total_params"] < body["rows"][0]["total_params"]
    assert any(r["pareto"] for r in body["rows"])
    assert (out / "sweep.png").is_file() and (out / "sweep.md").is_file()
    state = json.loads((out / "state.json").read_text())["stages"]
    assert [k for k in state if k.endswith("analyze")] == ["analyze"]
    assert "keep-30/attempt-1/finetune" in state and "keep-70/attempt-1/export" in state


def test_closed_loop_tightens_and_reports_every_attempt(tiny_bert_dir, tmp_path):
    from deploy.profile import known_profiles

    # a calibration claiming the device is 10^4 times slower than any host: every attempt misses
    profile = tmp_path / "slow-board.yaml"
    text = known_profiles()["rpi4-4gb"].read_text().replace("id: rpi4-4gb", "id: slow-board")
    text = text.replace("  sustained_gops_int8: 27\n", "  sustained_gops_int8: 27\n  calibration: {probe: "
                        "matmul_128x384x1536, fp32_ms: 100000, int8_ms: 100000, threads: 1}\n")
    profile.write_text(text)
    out = tmp_path / "out"
    fast = [a for a in FAST if a not in ("--precision", "int8")]
    result = _run("--model", str(tiny_bert_dir), "--out", str(out), *fast, "--precision", "fp32",
                  "--profile", str(profile), "--max-attempts", "2", "--teacher", "none", "--no-dense-baseline")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "target NOT met" in result.stdout and "tightening the budget" in result.stdout
    assert "derived from a probe timed on the device" in result.stdout  # this profile is calibrated
    report = json.loads((out / "report.json").read_text())
    assert not report["target_met"] and len(report["attempts"]) == 2
    first, second = report["attempts"]
    assert first["check"]["latency_tag"] == "[D]" and not first["check"]["latency_ok"]
    assert second["trimmable_params"] < first["trimmable_params"]
    assert "| 2 |" in (out / "report.md").read_text()
