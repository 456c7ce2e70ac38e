"""Sessions from a profile's runtime block, and the hand-serialised matrix-multiply probe."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from deploy.calibrate import DEFAULT_PROBE, probe_flops, probe_model, probe_shape, run_probe
from deploy.errors import DeployError, InputError
from deploy.profile import load_profile
from deploy.session import host_cpu_count, open_session, session_settings


def test_settings_come_from_the_runtime_block():
    runtime = load_profile("rpi4-4gb").runtime
    settings = session_settings(runtime)
    assert settings.intra_op_threads == runtime.intra_op_threads
    assert settings.inter_op_threads == runtime.inter_op_threads
    assert settings.session_config == dict(runtime.session_config)
    assert session_settings(runtime, threads=1).intra_op_threads == 1
    default = session_settings(None)
    assert default.intra_op_threads == host_cpu_count() and default.warnings == ()


def test_threads_above_host_cpus_warn_and_are_recorded(caplog):
    too_many = host_cpu_count() + 1
    settings = session_settings(None, too_many)
    assert settings.intra_op_threads == too_many
    assert len(settings.warnings) == 1 and f"exceeds the {host_cpu_count()} CPU(s)" in settings.warnings[0]
    with caplog.at_level(logging.WARNING, logger="deploy"):
        session = open_session(probe_model("matmul_8x16x4", "fp32"), None, too_many)
    assert session.get_providers() == ["CPUExecutionProvider"]  # the session still opens
    assert any("exceeds" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_thread_count(threads):
    with pytest.raises(InputError, match="thread count"):
        session_settings(None, threads)


def test_creation_failure_is_a_deploy_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(DeployError, match="broken.onnx: onnxruntime .* could not create a session"):
        open_session(bad, None, 1)
    with pytest.raises(DeployError, match="model file not found"):
        open_session(tmp_path / "absent.onnx", None, 1)


def test_bad_session_config_values_are_refused():
    runtime = load_profile("rpi4-4gb").runtime
    spinning = dataclasses.replace(runtime, session_config={"session.intra_op.allow_spinning": "maybe"})
    with pytest.raises(InputError, match="allow_spinning='maybe'.*only \"0\" or \"1\""):
        open_session(probe_model("matmul_8x16x4", "fp32"), spinning, 1)
    affinity = dataclasses.replace(runtime, session_config={"session.intra_op_thread_affinities": "zzz"})
    with pytest.raises(DeployError, match="could not create a session"):
        open_session(probe_model("matmul_8x16x4", "fp32"), affinity, 2)


@pytest.mark.parametrize("precision, ops", [
    ("fp32", ["MatMul"]),
    ("int8", ["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul"]),
])
def test_probe_graph_is_valid_onnx_and_computes_the_product(precision, ops):
    data = probe_model("matmul_16x48x24", precision)
    assert data == probe_model("matmul_16x48x24", precision)  # seeded: same bytes every time
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ops
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w = weights["W"] if precision == "fp32" else weights["W_q"].astype(np.float32) * weights["W_scale"]
    x = np.random.default_rng(3).standard_normal((16, 48)).astype(np.float32)
    y = open_session(data, None, 1).run(None, {"X": x})[0]
    expected = x @ w
    tol = 1e-5 if precision == "fp32" else 0.03  # int8: activation quantisation error
    assert np.abs(y - expected).max() <= tol * np.abs(expected).max()


def test_probe_names_and_timing():
    assert probe_shape(DEFAULT_PROBE) == (128, 384, 1536)
    assert probe_flops("matmul_2x3x4") == 48
    for bad in ("matmul_128x384", "gemm_1x2x3", "matmul_0x4x4", "matmul_100000x100000x1"):
        with pytest.raises(InputError, match="probe"):
            probe_shape(bad)
    timing = run_probe("matmul_32x64x64", "int8", session_settings(None, 1), runs=5, warmup=1)
    assert timing.threads == 1 and timing.runs == 5
    assert 0 < timing.min_ms <= timing.median_ms
    assert timing.gops == pytest.approx(probe_flops("matmul_32x64x64") / (timing.median_ms * 1e6))
