"""Step 9 tools on a real exported tiny BERT: latency at real input lengths and the operator profile."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deploy.errors import InputError
from test_deploy_runner import _export, pair_artifact  # noqa: E402,F401  (tests/ is on sys.path; a fixture)

WORDS = "the film was a quiet and moving story about a river city and its people".split()


@pytest.fixture(scope="module")
def artifact(tiny_finetuned_dir, tmp_path_factory):
    return _export(tiny_finetuned_dir, tmp_path_factory.mktemp("speed") / "single", "single")


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    """40 inputs of 1 to 40 words (some longer than the artifact's 32 tokens), a blank and a bad line."""
    path = tmp_path_factory.mktemp("speed") / "lines.txt"
    body = [" ".join((WORDS * 3)[:n]) for n in range(1, 41)]
    path.write_bytes(("\n".join(body) + "\n\n").encode() + b"\xff\xfe bad\n")
    return path


def test_real_lengths_give_one_latency_per_bucket(artifact, lines):
    from deploy.lengths import LengthBenchConfig, measure_lengths
    from deploy.predict import read_lines, usable_items

    items = usable_items(read_lines(lines), "single", str(lines))
    assert len(items) == 40  # the blank and the non-UTF-8 line are not inputs
    r = measure_lengths(artifact, items, config=LengthBenchConfig(buckets=(8, 16, 64), warmup=2, threads=1))
    # bounds above max_length (32) are cut: 8, 16, then max_length itself
    assert [b.upto for b in r.buckets] == [8, 16, 32]
    assert sum(b.inputs for b in r.buckets) == r.inputs == 40
    lower = 0
    for b in r.buckets:
        assert lower < b.mean_tokens <= b.upto and b.p50_ms > 0
        lower = b.upto
    assert r.tokens_max == 32 and r.truncated > 0 and any("truncated" in w for w in r.warnings)
    assert r.p50_ms <= r.p90_ms <= r.p99_ms and r.ms_per_input == pytest.approx(r.mean_ms)


def test_padded_buckets_batch_inputs_of_one_bucket(artifact, lines):
    from deploy.lengths import LengthBenchConfig, measure_lengths
    from deploy.predict import read_lines, usable_items

    items = usable_items(read_lines(lines), "single", str(lines))
    r = measure_lengths(artifact, items, config=LengthBenchConfig(buckets=(16,), pad_to_buckets=True, batch=4,
                                                                 threads=1, warmup=1))
    assert r.batch == 4 and r.padded_to_buckets and sum(b.inputs for b in r.buckets) == 40
    runs = sum(-(-b.inputs // 4) for b in r.buckets)
    assert r.ms_per_input == pytest.approx(r.mean_ms * runs / 40)
    with pytest.raises(InputError, match="--batch > 1 over real inputs needs --pad-to-buckets"):
        LengthBenchConfig(batch=4)
    with pytest.raises(InputError, match="must be increasing whole numbers"):
        LengthBenchConfig(buckets=(64, 16))


def test_cli_bench_input_and_bad_files(artifact, lines, tmp_path):
    out = tmp_path / "lengths.json"
    run = subprocess.run([sys.executable, "-m", "deploy", "bench", str(artifact), "--profile", "rpi4-4gb",
                          "--input", str(lines), "--threads", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "tokens ≤" in run.stdout and "real inputs" in run.stdout
    body = json.loads(out.read_text())
    assert body["schema"] == "sensibert.bench_lengths" and body["inputs"] == 40
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    bad = subprocess.run([sys.executable, "-m", "deploy", "bench", str(artifact), "--profile", "rpi4-4gb",
                          "--input", str(empty)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "no usable input line" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_cli_bench_input_times_pairs_at_the_pairs_own_lengths(pair_artifact, tmp_path):
    """A pair artifact's input file holds tab-separated pairs: each is timed at the length of both
    texts together ([CLS] a [SEP] b [SEP]), and a line without a tab is not an input."""
    from tokenizers import Tokenizer

    pairs = [(" ".join(WORDS[:n]), " ".join(WORDS[n:n + 3])) for n in range(1, 9)]
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(f"{a}\t{b}" for a, b in pairs) + "\nno tab on this line\n")
    out = tmp_path / "lengths.json"
    run = subprocess.run([sys.executable, "-m", "deploy", "bench", str(pair_artifact), "--profile", "rpi4-4gb",
                          "--input", str(path), "--threads", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    body = json.loads(out.read_text())
    tok = Tokenizer.from_file(str(pair_artifact / "tokenizer.json"))
    lengths = [len(tok.encode(a, b).ids) for a, b in pairs]
    assert body["inputs"] == len(pairs) and body["tokens_max"] == max(lengths)
    assert body["tokens_mean"] == pytest.approx(sum(lengths) / len(lengths))


def test_summarise_trace_assigns_kernels_to_runs_and_skips_warmup():
    from deploy.opprofile import summarise_trace

    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},      # warm-up
              {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 50, "args": {"op_name": "MatMul"}},
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
              {"cat": "Node", "name": "b_kernel_time", "ts": 210, "dur": 30, "args": {"op_name": "MatMul"}},
              {"cat": "Node", "name": "c_kernel_time", "ts": 250, "dur": 20, "args": {"op_name": "Gelu"}},
              {"cat": "Node", "name": "c_fence_before", "ts": 250, "dur": 1, "args": {"op_name": "Gelu"}},
              {"cat": "Session", "name": "model_run", "ts": 400, "dur": 80},
              {"cat": "Node", "name": "d_kernel_time", "ts": 410, "dur": 40, "args": {"op_name": "MatMul"}}]
    durations, per_op = summarise_trace(events, skip_runs=1)
    assert durations == [0.1, 0.08]
    assert per_op == {"MatMul": [0.07, 2.0], "Gelu": [0.02, 1.0]}


def test_operator_profile_sums_to_the_run_time(artifact):
    from deploy.opprofile import BETWEEN, profile_run

    for precision in ("fp32", "int8"):
        p = profile_run(artifact, precision, seq_len=32, runs=10, warmup=2)
        total = sum(o.ms for o in p.ops)
        assert total == pytest.approx(p.run_ms, rel=1e-6)           # the rows add up to the profiled run
        assert 0 < p.kernel_ms() <= p.run_ms  # a tiny graph: launch overhead is much of each run
        assert 0.5 * p.wall_ms < p.run_ms <= 1.05 * p.wall_ms        # and the run to what was timed outside
        ops = {o.op_type for o in p.ops}
        assert BETWEEN in ops and ("MatMul" in ops if precision == "fp32" else ops & {"MatMulInteger",
                                                                                      "DynamicQuantizeMatMul"})
        assert sum(o.share for o in p.ops) == pytest.approx(1.0)
        # deploy sessions keep onnxruntime from fusing Add + LayerNormalization into its slow kernel
        assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
    from deploy.errors import DeployError

    with pytest.raises(DeployError, match="artifact has no fp16 model; it has fp32, int8"):
        profile_run(artifact, "fp16")


def test_cli_ops_and_inspect_profile_run(artifact, tmp_path):
    out = tmp_path / "ops.json"
    run = subprocess.run([sys.executable, "-m", "deploy", "ops", str(artifact), "--runs", "3", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "(between kernels)" in run.stdout and json.loads(out.read_text())["schema"] == "sensibert.op_profile"
    run = subprocess.run([sys.executable, "-m", "toolchain", "inspect", str(artifact), "--profile-run", "--json",
                          "--runs", "3", "--precision", "int8", "--seq-len", "16"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    body = json.loads(run.stdout)
    assert body["precision"] == "int8" and body["seq_len"] == 16 and body["runs"] == 3
