"""`sensibert budget` and `sensibert profiles` as a user runs them: subprocesses on the packaged MiniLM."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deploy.profile import known_profiles, load_profile


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", sorted(known_profiles()))
def test_budget_for_every_shipped_profile(name, minilm_dir):
    profile = load_profile(name)
    result = _cli("budget", "--profile", name, "--json")
    assert "Traceback" not in result.stderr
    body = json.loads(result.stdout)
    assert body["profile"] == profile.id and body["seq_len"] == profile.budget.seq_len
    assert body["max_flops"] == pytest.approx(
        profile.compute.sustained(profile.runtime.precision) * 1e6 * profile.budget.latency_target_ms, rel=1e-6)
    if profile.status == "infeasible":
        assert result.returncode == 2 and not body["feasible"]
        assert result.stderr.startswith("error: profile") and "infeasible" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    else:
        assert result.returncode == 0 and body["feasible"]
        assert 0 < body["keep"] <= 1
        assert body["binding"] in ("memory", "latency", "none")


def test_budget_text_names_binding_constraint(minilm_dir):
    result = _cli("budget", "--profile", "rpi4-4gb", "--precision", "fp32", "--latency-ms", "20")
    assert result.returncode == 0, result.stderr
    assert "latency binds" in result.stdout and "0.360 GFLOP" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["budget", "--profile", "no-such-device"], "unknown device profile 'no-such-device'; choose one of:"),
    (["budget", "--profile", "rpi4-4gb", "--seq-len", "0"], "sequence length 0 is out of range"),
    (["budget", "--profile", "rpi4-4gb", "--seq-len", "513"], "sequence length 513 is out of range"),
    (["budget", "--profile", "rpi4-4gb", "--latency-ms", "-5"], "latency target -5.0 ms is out of range"),
    (["budget", "--profile", "rpi4-4gb", "--model", "/nonexistent/dir"], "does not exist"),
    (["budget", "--profile", "rpi4-4gb", "--model", "bert-base/uncased"], "looks like a hub id"),
])
def test_budget_bad_input_one_line(args, message, minilm_dir):
    result = _cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_model_dir_checks(tmp_path, minilm_dir):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    result = _cli("budget", "--profile", "rpi4-4gb", "--model", str(tmp_path))
    assert result.returncode == 2 and "model_type 'gpt2' is not supported" in result.stderr
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = _cli("budget", "--profile", "rpi4-4gb", "--model", str(tmp_path))
    assert result.returncode == 2 and "no weights found" in result.stderr
    (tmp_path / "config.json").unlink()
    result = _cli("budget", "--profile", "rpi4-4gb", "--model", str(tmp_path))
    assert result.returncode == 2 and "no config.json" in result.stderr


def test_profiles_list_and_show(minilm_dir):
    listed = _cli("profiles")
    assert listed.returncode == 0
    for name in known_profiles():
        assert name in listed.stdout
    shown = _cli("profiles", "show", "rpi4-4gb")
    assert shown.returncode == 0 and "id: rpi4-4gb" in shown.stdout and "device budget" in shown.stdout


def test_user_profile_file_works_where_a_name_does(tmp_path, minilm_dir):
    path = tmp_path / "my-board.yaml"
    path.write_text(known_profiles()["rpi4-4gb"].read_text().replace("id: rpi4-4gb", "id: my-board"))
    result = _cli("budget", "--profile", str(path), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["profile"] == "my-board"
