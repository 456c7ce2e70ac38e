"""The on-device runner on a real exported tiny BERT: predict, bench, calibrate and check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from deploy.artifacts import sha256_file
from deploy.errors import DeployError, InputError
from deploy.manifest import read_manifest, write_manifest
from deploy.measure import BenchConfig, check, measure, read_bench, write_bench
from deploy.predict import PredictConfig, Predictor, predict
from deploy.profile import load_profile
from deploy.session import host_cpu_count

MAX_LENGTH = 32  # the tiny model takes 64 positions; 32 makes truncation easy to trigger
LABELS = ["negative", "positive"]


def _export(model_dir, out, task_kind):
    """Export the tiny BERT with optimum (fp32 + dynamic int8) and write the manifest."""
    import torch
    from onnxruntime.quantization import quantize_dynamic
    from optimum.exporters.onnx import export
    from optimum.exporters.onnx.model_configs import BertOnnxConfig
    from transformers import BertForSequenceClassification, BertTokenizerFast

    out.mkdir(parents=True)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(model_dir).eval()
    export(model, BertOnnxConfig(model.config, task="text-classification"), out / "model.onnx", opset=17)
    quantize_dynamic(out / "model.onnx", out / "model.int8.onnx")
    BertTokenizerFast.from_pretrained(model_dir).backend_tokenizer.save(str(out / "tokenizer.json"))
    write_manifest(out, task="sst2" if task_kind == "single" else "qnli", task_kind=task_kind,
                   label_names=LABELS, max_length=MAX_LENGTH,
                   models={"fp32": "model.onnx", "int8": "model.int8.onnx"}, profile=load_profile("rpi4-4gb"))
    return out


@pytest.fixture(scope="module")
def artifact(tiny_finetuned_dir, tmp_path_factory):
    return _export(tiny_finetuned_dir, tmp_path_factory.mktemp("deploy") / "single", "single")


@pytest.fixture(scope="module")
def pair_artifact(artifact, tmp_path_factory):
    """The same models and tokenizer declared as a sentence-pair task."""
    out = tmp_path_factory.mktemp("deploy") / "pair"
    out.mkdir()
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json"):
        shutil.copy(artifact / name, out / name)
    write_manifest(out, task="qnli", task_kind="pair", label_names=LABELS, max_length=MAX_LENGTH,
                   models={"fp32": "model.onnx", "int8": "model.int8.onnx"})
    return out


def _torch_probs(model_dir, texts, pairs=None):
    import torch
    from transformers import BertForSequenceClassification, BertTokenizerFast

    model = BertForSequenceClassification.from_pretrained(model_dir).eval()
    tok = BertTokenizerFast.from_pretrained(model_dir)
    batch = tok(texts, pairs, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**batch).logits.double(), -1).numpy()


def _cli(*args, stdin=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "deploy", *map(str, args)], input=stdin, capture_output=True,
                          timeout=300, cwd=cwd)


# ---------------------------------------------------------------- predict


def test_predict_matches_torch(artifact, tiny_finetuned_dir):
    texts = ["the movie was good", "what a dull and boring plot", "paris is the capital of france"]
    results = predict(artifact, texts, PredictConfig(batch_size=2))
    probs = np.array([r.probabilities for r in results])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(probs, _torch_probs(tiny_finetuned_dir, texts), atol=1e-5)
    assert [r.label for r in results] == [LABELS[i] for i in probs.argmax(axis=1)]
    assert [r.line for r in results] == [1, 2, 3]


def test_predict_pairs_match_torch(pair_artifact, tiny_finetuned_dir):
    a, b = ["who did it", "where is paris"], ["the actors did it", "paris is in france"]
    results = predict(pair_artifact, [f"{x}\t{y}" for x, y in zip(a, b)])
    np.testing.assert_allclose([r.probabilities for r in results], _torch_probs(tiny_finetuned_dir, a, b), atol=1e-5)


def test_bad_lines_are_reported_and_the_rest_predicted(artifact, pair_artifact):
    long = " ".join(["the movie"] * 40)  # 80 words > MAX_LENGTH tokens
    lines = [b"the movie was good\n", b"\n", b"   \n", b"caf\xe9 latte\n", long.encode() + b"\n", b"fun\r\n"]
    results = predict(artifact, lines, PredictConfig(batch_size=2))
    assert [r.line for r in results] == [1, 2, 3, 4, 5, 6]
    errors = {r.line: r.error for r in results if r.error}
    assert errors[2] == "empty line" and errors[3] == "empty line"
    assert errors[4].startswith("not valid UTF-8 (byte 0xe9 at byte 4)")
    good = [r for r in results if not r.error]
    assert [r.line for r in good] == [1, 5, 6] and all(r.label in LABELS for r in good)
    assert [r.truncated for r in good] == [False, True, False]
    pair = predict(pair_artifact, ["who did it\tthe actors", "no tab here", "a\tb\tc"])
    assert pair[0].error is None
    assert "found 1 field(s)" in pair[1].error and "found 3 field(s)" in pair[2].error


def test_predictor_options(artifact):
    predictor = Predictor(artifact, PredictConfig(precision="int8", threads=1))
    assert predictor.model_path.name == "model.int8.onnx"
    probs, truncated = predictor.probabilities(["the movie was good"])
    assert probs.shape == (1, 2) and truncated == [False]
    with pytest.raises(InputError, match="batch size"):
        PredictConfig(batch_size=0)


def test_an_int8_answer_does_not_depend_on_its_batch_mates(artifact):
    """Dynamic int8 computes its activation scales over the whole call: batched with a long,
    different input, a short one would get other probabilities (asserted on the raw session, so
    this test can fail); the predictor runs int8 one input per call, fp32 as batched."""
    from deploy.predict import encode, session_feed

    short, long = "the movie was good", " ".join(["what a dull and boring plot , paris burns"] * 3)
    predictor = Predictor(artifact, PredictConfig(precision="int8", batch_size=16, threads=1))
    alone, _ = predictor.probabilities([short])
    together, _ = predictor.probabilities([short, long])
    np.testing.assert_array_equal(together[0], alone[0])
    fp32 = Predictor(artifact, PredictConfig(precision="fp32", batch_size=16, threads=1))

    def raw(p, items):
        return p.session.run(None, session_feed(p.session, encode(p.tokenizer, items)[0]))[0]

    moved = np.abs(raw(predictor, [short, long])[0] - raw(predictor, [short])[0]).max()
    assert moved > 1e-6 and moved > 100 * np.abs(raw(fp32, [short, long])[0] - raw(fp32, [short])[0]).max()
    assert predictor.rows_per_call == 1 and fp32.rows_per_call == 16


def test_cli_predict_jsonl_and_table(artifact, tmp_path):
    long = " ".join(["the movie"] * 40)
    data = f"the movie was good\n\n{long}\n{long}\nfun\n".encode() + b"\xff oops\n"
    result = _cli("predict", artifact, "--batch-size", "2", stdin=data, cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # finished, but some lines were skipped
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[1] == {"line": 2, "error": "empty line"} and "not valid UTF-8" in rows[5]["error"]
    for r in (rows[0], rows[2], rows[3], rows[4]):
        assert set(r["probabilities"]) == set(LABELS)
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    stderr = result.stderr.decode()
    assert "line 2: empty line; skipped" in stderr and "line 6: not valid UTF-8" in stderr
    assert "2 line(s) longer than max_length 32 tokens were truncated (lines 3, 4)" in stderr
    (tmp_path / "in.txt").write_text("the movie was good\nbad\n")
    table = _cli("predict", artifact, "--input", tmp_path / "in.txt", "--format", "table", "--precision", "int8")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.decode().splitlines()
    assert "p_negative" in lines[0] and len(lines) == 3 and lines[1].split()[0] == "1"


def test_cli_refuses_an_altered_artifact(artifact, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    with open(copy / "model.int8.onnx", "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    result = _cli("predict", copy, stdin=b"the movie\n")
    err = result.stderr.decode()
    assert result.returncode == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "model.int8.onnx: hash mismatch" in err
    assert _cli("predict", copy, "--no-verify", stdin=b"the movie\n").returncode == 0


# ---------------------------------------------------------------- bench, calibrate, check


def test_bench_result_fields(artifact, tmp_path):
    profile = load_profile("rpi4-4gb")
    result = measure(artifact, profile, BenchConfig(runs=7, warmup=1, threads=1))
    assert result.precision == profile.runtime.precision == "int8"
    assert result.model_sha256 == sha256_file(artifact / "model.int8.onnx")
    assert result.seq_len == MAX_LENGTH  # the profile's 128 clamped to the artifact's max_length, with a warning
    assert any("budgets seq_len 128" in w for w in result.warnings)
    assert result.batch == 1 and result.n_runs == 7 and result.intra_op_threads == 1
    assert result.session_config == dict(profile.runtime.session_config)
    assert 0 < result.min_ms <= result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms
    assert result.load_ms > 0 and result.throughput_per_s == pytest.approx(1e3 / result.mean_ms)
    assert 0 < result.rss_start_bytes < result.rss_after_import_bytes <= result.peak_rss_bytes
    assert result.rss_after_session_bytes <= result.peak_rss_bytes
    est = result.estimate
    assert est.method == "sustained_rate" and est.tag == "[E]" and est.device_rate_gops == 27
    assert est.scale == pytest.approx(est.host_probe_gops / 27)
    assert est.latency_ms == pytest.approx(result.p50_ms * est.scale)
    assert result.ort_version and result.providers == ("CPUExecutionProvider",)
    out = write_bench(result, tmp_path / "r.json")
    assert read_bench(out) == result
    assert json.loads(out.read_text())["schema"] == "sensibert.bench"


def test_bench_options_and_errors(artifact, pair_artifact):
    profile = load_profile("rpi4-4gb")
    pair = measure(pair_artifact, profile, BenchConfig(precision="fp32", seq_len=16, batch=3, runs=3,
                                                       warmup=0, threads=1, memory=False))
    assert (pair.precision, pair.seq_len, pair.batch, pair.model_file) == ("fp32", 16, 3, "model.onnx")
    assert pair.peak_rss_bytes is None and pair.peak_rss_source == "not measured"
    with pytest.raises(InputError, match="seq_len 64 exceeds the artifact's max_length 32"):
        measure(artifact, profile, BenchConfig(seq_len=64, memory=False))
    with pytest.raises(InputError, match="runs must be"):
        BenchConfig(runs=0)


def test_bench_threads_above_host_warn_and_measure(artifact):
    too_many = host_cpu_count() + 1
    result = measure(artifact, load_profile("rpi4-4gb"),
                     BenchConfig(runs=3, warmup=0, threads=too_many, memory=False))
    assert result.intra_op_threads == too_many and result.p50_ms > 0
    assert any(f"intra_op_threads={too_many} exceeds" in w for w in result.warnings)


def test_calibrate_writes_a_loadable_copy_used_by_bench(artifact, tmp_path):
    out = tmp_path / "calibrated.yaml"
    result = _cli("calibrate", "--profile", "rpi4-4gb", "--threads", "1", "--runs", "5", "--out", out,
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == [out]
    calibrated = load_profile(out)
    original = load_profile("rpi4-4gb")
    cal = calibrated.compute.calibration
    assert cal.probe == "matmul_128x384x1536" and cal.threads == 1 and cal.fp32_ms > 0 and cal.int8_ms > 0
    assert cal.onnxruntime and cal.measured_on
    assert calibrated.runtime == original.runtime and calibrated.budget == original.budget
    assert original.compute.calibration is None
    bench = measure(artifact, calibrated, BenchConfig(runs=3, warmup=1, threads=1, memory=False))
    est = bench.estimate
    assert est.method == "calibration" and est.tag == "[D]" and est.device_probe_ms == cal.int8_ms
    assert est.scale == pytest.approx(cal.int8_ms / est.host_probe_ms)
    assert any("device probe ran with 1 thread(s) but the profile's runtime uses 4" in w for w in bench.warnings)


def test_check_passes_then_fails_on_a_tiny_memory_budget(artifact, tmp_path):
    report = check(artifact, load_profile("rpi4-4gb"), BenchConfig(runs=3, warmup=1))
    assert report.passed and [i.name for i in report.items] == ["hashes", "peak memory", "latency [E]"]
    doc = load_profile("rpi4-4gb").to_dict()
    doc["id"] = "tiny-memory"
    doc["hardware"]["ram_available_bytes"] = 20_000_000  # half of it (10 MB) is below any Python process
    doc = json.loads(json.dumps(doc))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(doc))
    result = _cli("check", artifact, "--profile", tmp_path / "tiny.yaml", "--runs", "3", "--warmup", "1",
                  "--out", tmp_path / "check.json")
    out = result.stdout.decode()
    assert result.returncode == 1, result.stderr
    assert "FAIL  peak memory" in out and "> 9.5 MiB" in out and "PASS  hashes" in out
    assert "MEASURED ON THIS HOST" in out and "ESTIMATED FOR tiny-memory [E]" in out
    saved = json.loads((tmp_path / "check.json").read_text())
    assert saved["passed"] is False and saved["items"][1]["limit"] == 10_000_000


def test_check_fails_on_latency_and_reports_broken_artifacts(artifact, tmp_path):
    doc = json.loads(json.dumps(load_profile("rpi4-4gb").to_dict()))
    doc["id"], doc["budget"]["latency_target_ms"] = "impatient", 1e-6
    (tmp_path / "impatient.yaml").write_text(yaml.safe_dump(doc))
    report = check(artifact, load_profile(tmp_path / "impatient.yaml"), BenchConfig(runs=3, warmup=0))
    assert not report.passed and not report.items[2].passed and report.items[1].passed
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(DeployError, match="tokenizer.json: artifact file missing"):
        check(copy, load_profile("rpi4-4gb"), BenchConfig(runs=3))
    result = _cli("bench", copy, "--profile", "rpi4-4gb", "--runs", "2")
    assert result.returncode == 2 and "artifact file missing" in result.stderr.decode()


def test_cli_bench_table_and_json(artifact, tmp_path):
    result = _cli("bench", artifact, "--profile", "rpi4-4gb", "--runs", "3", "--warmup", "1", "--threads", "1",
                  "--no-memory", "--out", tmp_path / "b.json")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "MEASURED ON THIS HOST" in out and "ESTIMATED FOR rpi4-4gb [E]" in out and "latency p50" in out
    saved = read_bench(tmp_path / "b.json")
    assert saved.n_runs == 3 and saved.intra_op_threads == 1
    assert read_manifest(artifact).profile_id == "rpi4-4gb"


def test_uncalibrated_estimate_prices_the_manifest_flops():
    from deploy.measure import estimate_device_latency
    from deploy.session import session_settings

    profile = load_profile("rpi4-4gb")
    settings = session_settings(profile.runtime, 1)
    est = estimate_device_latency(profile, "int8", settings, host_ms=5.0, flops=2_700_000_000)
    assert est.method == "flops_over_sustained_rate" and est.tag == "[E]"
    assert est.latency_ms == pytest.approx(2.7e9 / 27e9 * 1e3)  # 100 ms at 27 GOP/s
    assert est.scale == pytest.approx(est.latency_ms / 5.0)
