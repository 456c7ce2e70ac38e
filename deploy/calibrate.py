"""The matrix-multiply probe: one BERT-shaped MatMul timed in fp32 and dynamic int8.

Weight GEMMs are ~97% of a BERT encoder's FLOPs at sequence 128, and on the x86 test host
the whole encoder ran within 10-20% of a lone MatMul's rate (research notes §1.4, §8.3), so
the ratio of probe times between a device and this host scales a host latency to the device.
``calibrate`` runs the probe on the device and writes the timings into a copy of its profile.

The probe graph is serialised here by hand (a few protobuf fields) because ``deploy`` may not
depend on the ``onnx`` package; the test suite checks the bytes with ``onnx.checker``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import statistics
import struct
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import InputError
from deploy.session import SessionSettings, open_session, session_settings, timed_runs

DEFAULT_PROBE = "matmul_128x384x1536"  # MiniLM-sized FFN up-projection at sequence 128
_PROBE_RE = re.compile(r"^matmul_(\d+)x(\d+)x(\d+)$")
_MAX_PROBE_ELEMENTS = 64 * 1024 * 1024  # keeps a typo from allocating gigabytes


@dataclass(frozen=True)
class ProbeTiming:
    """Median time of one probe at one precision and thread count."""

    probe: str
    precision: str
    threads: int
    median_ms: float
    min_ms: float
    runs: int
    gops: float  # billions of multiply-add*2 operations per second at the median

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CalibrateConfig:
    """How to run the probe: which one, with how many threads, how many timed runs."""

    probe: str = DEFAULT_PROBE
    threads: int | None = None  # default: the profile's runtime.intra_op_threads
    runs: int = 50
    warmup: int = 5

    def __post_init__(self) -> None:
        probe_shape(self.probe)
        if self.runs < 1 or self.warmup < 0:
            raise InputError(f"runs must be ≥ 1 and warmup ≥ 0, got runs={self.runs} warmup={self.warmup}")


# ---------------------------------------------------------------- the probe graph


def probe_shape(name: str) -> tuple[int, int, int]:
    """Return (M, K, N) of a probe named ``matmul_MxKxN``: an (M×K) by (K×N) product."""
    match = _PROBE_RE.match(str(name))
    if not match:
        raise InputError(f"unknown probe {name!r}; probes are named matmul_MxKxN, e.g. {DEFAULT_PROBE}")
    m, k, n = (int(g) for g in match.groups())
    if min(m, k, n) < 1 or max(m * k, k * n, m * n) > _MAX_PROBE_ELEMENTS:
        raise InputError(f"probe {name!r} has a dimension out of range; use sizes like {DEFAULT_PROBE}")
    return m, k, n


def probe_flops(name: str) -> int:
    """Return the probe's operation count (a multiply-add counts 2)."""
    m, k, n = probe_shape(name)
    return 2 * m * k * n


def probe_model(name: str, precision: str) -> bytes:
    """Return the serialised ONNX probe: ``Y = X @ W`` with W a constant (so onnxruntime prepacks it).

    int8 is what dynamic quantisation produces: DynamicQuantizeLinear on X, MatMulInteger with
    int8 weights, then a float rescale; onnxruntime fuses it into its quantised GEMM kernel.
    Weights are seeded, so the bytes are the same on every machine.
    """
    import numpy as np

    m, k, n = probe_shape(name)
    rng = np.random.default_rng(0)
    x_info = _value_info("X", _FLOAT, (m, k))
    y_info = _value_info("Y", _FLOAT, (m, n))
    if precision == "fp32":
        weight = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        inits = [_tensor("W", _FLOAT, (k, n), weight.tobytes())]
        nodes = [_node("MatMul", ["X", "W"], ["Y"], "matmul")]
    elif precision == "int8":
        # 7-bit weights (onnxruntime's reduce_range): without AVX-512 VNNI the u8 x s8 kernel adds
        # products in pairs into 16 bits, which full-range weights overflow (wrong sums, not slower)
        weight = rng.integers(-64, 64, size=(k, n), dtype=np.int8)
        inits = [_tensor("W_q", _INT8, (k, n), weight.tobytes()),
                 _tensor("W_zero", _INT8, (), b"\x00"),
                 _tensor("W_scale", _FLOAT, (), struct.pack("<f", 0.004))]
        nodes = [_node("DynamicQuantizeLinear", ["X"], ["X_q", "X_scale", "X_zero"], "quantize"),
                 _node("MatMulInteger", ["X_q", "W_q", "X_zero", "W_zero"], ["Y_int"], "matmul"),
                 _node("Cast", ["Y_int"], ["Y_float"], "cast", attrs={"to": _FLOAT}),
                 _node("Mul", ["X_scale", "W_scale"], ["scale"], "scale"),
                 _node("Mul", ["Y_float", "scale"], ["Y"], "rescale")]
    else:
        raise InputError(f"unknown precision {precision!r}; choose fp32 or int8")
    graph = (b"".join(_bytes(1, nd) for nd in nodes) + _str(2, f"probe_{name}_{precision}")
             + b"".join(_bytes(5, t) for t in inits) + _bytes(11, x_info) + _bytes(12, y_info))
    opset = _str(1, "") + _int(2, 13)
    return _int(1, 7) + _str(2, "sensibert-deploy") + _bytes(7, graph) + _bytes(8, opset)


def run_probe(name: str, precision: str, settings: SessionSettings, runs: int = 50, warmup: int = 5) -> ProbeTiming:
    """Time the probe with ``settings``; return the median (host VMs are noisy, medians are not)."""
    import numpy as np

    m, k, _ = probe_shape(name)
    session = open_session(probe_model(name, precision), settings=settings)
    feed = {"X": np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)}
    times = timed_runs(session, [feed] * runs, warmup)
    median = statistics.median(times)
    return ProbeTiming(probe=name, precision=precision, threads=settings.intra_op_threads,
                       median_ms=median, min_ms=min(times), runs=runs,
                       gops=probe_flops(name) / (median * 1e-3) / 1e9)


# ---------------------------------------------------------------- calibration of a profile


def calibrate(profile, config: CalibrateConfig = CalibrateConfig()):
    """Return a ``deploy.profile.Calibration`` from probe runs on this machine with the profile's settings.

    Run it on the real device: its timings divided by the host's give the latency scale.
    """
    import onnxruntime as ort

    from deploy.profile import Calibration

    settings = session_settings(profile.runtime, config.threads)
    fp32 = run_probe(config.probe, "fp32", settings, config.runs, config.warmup)
    int8 = run_probe(config.probe, "int8", settings, config.runs, config.warmup)
    return Calibration(probe=config.probe, fp32_ms=round(fp32.median_ms, 4), int8_ms=round(int8.median_ms, 4),
                       threads=settings.intra_op_threads, onnxruntime=ort.__version__,
                       measured_on=f"{host_description()}, {_dt.date.today().isoformat()}")


def calibrated_profile_dict(profile, calibration) -> dict:
    """Return the profile's YAML mapping with ``compute.calibration`` set."""
    doc = json.loads(json.dumps(profile.to_dict()))  # tuples and mappings to plain YAML types
    doc["compute"]["calibration"] = dataclasses.asdict(calibration)
    return doc


def write_calibrated_profile(profile, calibration, out: str | os.PathLike, latency_table: Path | None = None) -> Path:
    """Write a copy of ``profile`` carrying ``calibration`` (and the name of its latency table file,
    which lies beside it); the copy is loaded back before it is kept."""
    import yaml

    from deploy.artifacts import atomic_path
    from deploy.profile import load_profile

    out = Path(out)
    source = Path(profile.path).name if profile.path else profile.id
    header = (f"# Copy of device profile {source} with compute.calibration measured by "
              f"`sensibert-deploy calibrate` on {calibration.measured_on}.\n")
    with atomic_path(out) as tmp:
        doc = calibrated_profile_dict(profile, calibration)
        if latency_table is not None:
            doc["compute"]["latency_table"] = Path(latency_table).name
        tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=100))
        load_profile(tmp)
    return out


def host_description() -> str:
    """Return a short description of this machine: CPU model, architecture, CPU count."""
    model = ""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        for key in ("model name", "Model", "Hardware", "cpu model"):
            found = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
            if found:
                model = found.group(1).strip()
                break
    except OSError:
        pass
    model = model or platform.processor() or "unknown CPU"
    return f"{model} ({platform.machine()}, {os.cpu_count()} CPUs)"


# ---------------------------------------------------------------- minimal protobuf writer
# Field numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto, TensorProto ...).

_FLOAT, _INT8 = 1, 3


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _str(field: int, value: str) -> bytes:
    return _bytes(field, value.encode())


def _tensor(name: str, dtype: int, dims: tuple[int, ...], raw: bytes) -> bytes:
    return b"".join(_int(1, d) for d in dims) + _int(2, dtype) + _str(8, name) + _bytes(9, raw)


def _value_info(name: str, dtype: int, dims: tuple[int, ...]) -> bytes:
    shape = b"".join(_bytes(1, _int(1, d)) for d in dims)
    tensor_type = _int(1, dtype) + _bytes(2, shape)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def _node(op: str, inputs: list[str], outputs: list[str], name: str, attrs: dict[str, int] | None = None) -> bytes:
    body = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    body += _str(3, name) + _str(4, op)
    for key, value in (attrs or {}).items():  # integer attributes only (AttributeProto type INT = 2)
        body += _bytes(5, _str(1, key) + _int(3, value) + _int(20, 2))
    return body
