"""Measure an artifact under a device profile's runtime settings, and estimate it on the device.

What is measured is measured on THIS host: model load time, latency percentiles over
fixed-shape tokenised text, and the peak resident memory of a fresh process that runs only
the session. The device latency is an estimate: host latency × (device probe time / host
probe time) where the profile carries a calibration, else host probe rate / the profile's
sustained rate, tagged [E] (research notes §8.3).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from deploy.artifacts import package_versions, read_json, write_json
from deploy.errors import DeployError, InputError
from deploy.manifest import Manifest, read_manifest, verify_files
from deploy.predict import bench_inputs

SCHEMA = "sensibert.bench"
VERSION = 1
MIN_SEQ_LEN = 8  # room for [CLS] text [SEP] text [SEP]
MEMORY_PROBE_RUNS = 10  # fixed shape: memory stops growing after the first run
# Fixed text for benchmark inputs: the same tokens on every run and every machine.

@dataclass(frozen=True)
class BenchConfig:
    """What to run; unset fields come from the profile (precision, seq_len, batch, threads)."""

    precision: str | None = None
    seq_len: int | None = None
    batch: int | None = None
    runs: int = 50
    warmup: int = 5
    threads: int | None = None
    memory: bool = True  # measure peak RSS in a fresh process
    verify: bool = True  # check the artifact's hashes first

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{name} must be a whole number ≥ 1, got {value!r}")
        if not isinstance(self.runs, int) or self.runs < 1:
            raise InputError(f"runs must be a whole number ≥ 1, got {self.runs!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise InputError(f"warmup must be a whole number ≥ 0, got {self.warmup!r}")
        if self.seq_len is not None and self.seq_len < MIN_SEQ_LEN:
            raise InputError(f"seq_len {self.seq_len} is too short; use at least {MIN_SEQ_LEN} tokens")
        if self.precision is not None and self.precision not in ("fp32", "int8"):
            raise InputError(f"unknown precision {self.precision!r}; choose fp32 or int8")


@dataclass(frozen=True)
class DeviceEstimate:
    """Latency estimated for the profile's device from the host measurement and a probe ratio."""

    device: str
    latency_ms: float  # estimated p50 on the device
    scale: float  # device time / host time
    method: str  # "measured" (this host is the device) | "latency_table" | "calibration" (probe timed on the
    # device) | "flops_over_sustained_rate" | "sustained_rate" (probe ratio)
    tag: str  # "[M]" measured | "[D]" derived from measurements on the device | "[E]" estimate from a prior
    probe: str
    host_probe_ms: float
    host_probe_gops: float
    device_probe_ms: float | None = None
    device_rate_gops: float | None = None
    note: str = ""


@dataclass(frozen=True)
class BenchResult:
    """Numbers measured on this host plus their context, and the device estimate."""

    artifact: str
    model_file: str
    model_sha256: str
    precision: str
    task: str
    profile_id: str
    profile_path: str
    batch: int
    seq_len: int
    n_warmup: int
    n_runs: int
    intra_op_threads: int
    inter_op_threads: int
    execution_mode: str
    enable_cpu_mem_arena: bool
    session_config: Mapping[str, str]
    load_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    throughput_per_s: float  # sequences per second at this batch
    peak_rss_bytes: int | None
    rss_start_bytes: int | None
    rss_after_import_bytes: int | None
    rss_after_session_bytes: int | None
    rss_after_runs_bytes: int | None
    peak_rss_source: str
    estimate: DeviceEstimate
    ort_version: str
    providers: tuple[str, ...]
    host: str
    host_cpus: int
    host_loadavg: tuple[float, ...] | None
    timestamp: str
    package_versions: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> BenchResult:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(body) - names)
        if unknown:
            raise InputError(f"unknown bench result field {unknown[0]!r}; regenerate it with sensibert-deploy bench")
        body = dict(body)
        body["estimate"] = DeviceEstimate(**body["estimate"])
        for key in ("providers", "warnings"):
            body[key] = tuple(body.get(key) or ())
        if body.get("host_loadavg") is not None:
            body["host_loadavg"] = tuple(body["host_loadavg"])
        return cls(**body)


def read_bench(path: str | os.PathLike) -> BenchResult:
    """Read a result written by ``bench --out``."""
    return BenchResult.from_dict(read_json(path, SCHEMA, VERSION))


def write_bench(result: BenchResult, path: str | os.PathLike) -> Path:
    """Write a result as JSON (schema sensibert.bench, version 1)."""
    return write_json(path, SCHEMA, VERSION, result.to_dict())


# ---------------------------------------------------------------- measuring


def measure(artifact: str | os.PathLike | Manifest, profile, config: BenchConfig = BenchConfig()) -> BenchResult:
    """Return latency, load time and peak memory on this host, and the latency estimate for the device.

    Example:
        >>> r = measure("out/sst2-rpi4", load_profile("rpi4-4gb"), BenchConfig(runs=100))
        >>> r.p50_ms, r.estimate.latency_ms, r.peak_rss_bytes
    """
    import numpy as np
    import onnxruntime as ort

    from deploy.calibrate import host_description
    from deploy.predict import load_tokenizer, session_feed
    from deploy.session import open_session, session_settings, timed_runs

    manifest = artifact if isinstance(artifact, Manifest) else read_manifest(artifact, verify=False)
    if config.verify:
        verify_files(manifest)
    warnings: list[str] = []
    precision = _choose_precision(manifest, profile, config, warnings)
    seq_len = _choose_seq_len(manifest, profile, config, warnings)
    batch = config.batch or profile.budget.batch
    settings = session_settings(profile.runtime, config.threads)
    warnings += settings.warnings
    model_path = manifest.runnable_model(precision)

    start = time.perf_counter()
    session = open_session(model_path, settings=settings)
    load_ms = (time.perf_counter() - start) * 1e3
    tokenizer = load_tokenizer(manifest)
    feed = session_feed(session, bench_inputs(tokenizer, manifest.task_kind, batch, seq_len), str(model_path))
    times = timed_runs(session, [feed] * config.runs, config.warmup)
    providers = tuple(session.get_providers())
    del session

    p50, p90, p99 = (float(v) for v in np.percentile(times, [50, 90, 99]))
    memory = probe_memory(model_path, settings, feed, config.warmup) if config.memory else {}
    flops = model_flops(manifest, batch, seq_len)
    estimate = estimate_device_latency(profile, precision, settings, p50, warnings, flops=flops,
                                       units=artifact_units(manifest, seq_len))
    mean = statistics.fmean(times)
    try:
        loadavg = tuple(round(x, 2) for x in os.getloadavg())
    except (AttributeError, OSError):
        loadavg = None
    if loadavg and loadavg[0] > settings.host_cpus:
        warnings.append(f"host load average {loadavg[0]} exceeds its {settings.host_cpus} CPU(s): "
                        "other processes competed for the cores during this run")
    return BenchResult(
        artifact=str(manifest.folder), model_file=manifest.models[precision],
        model_sha256=manifest.model_sha256(precision), precision=precision, task=manifest.task,
        profile_id=profile.id, profile_path=str(profile.path), batch=batch, seq_len=seq_len,
        n_warmup=config.warmup, n_runs=config.runs,
        intra_op_threads=settings.intra_op_threads, inter_op_threads=settings.inter_op_threads,
        execution_mode=settings.execution_mode, enable_cpu_mem_arena=settings.enable_cpu_mem_arena,
        session_config=dict(settings.session_config), load_ms=load_ms, mean_ms=mean,
        std_ms=statistics.pstdev(times), min_ms=min(times), p50_ms=p50, p90_ms=p90, p99_ms=p99,
        max_ms=max(times), throughput_per_s=batch * 1e3 / mean,
        peak_rss_bytes=memory.get("peak_rss_bytes"), rss_start_bytes=memory.get("rss_start_bytes"),
        rss_after_import_bytes=memory.get("rss_after_import_bytes"),
        rss_after_session_bytes=memory.get("rss_after_session_bytes"),
        rss_after_runs_bytes=memory.get("rss_after_runs_bytes"),
        peak_rss_source=memory.get("peak_source", "not measured"), estimate=estimate,
        ort_version=ort.__version__, providers=providers, host=host_description(),
        host_cpus=settings.host_cpus, host_loadavg=loadavg,
        timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        package_versions=package_versions(), warnings=tuple(warnings))


def probe_memory(model_path: Path, settings, feed: Mapping[str, Any], warmup: int,
                 runs: int = MEMORY_PROBE_RUNS) -> dict[str, Any]:
    """Return resident-memory readings of a fresh Python process that runs only this session."""
    import numpy as np

    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="sensibert-memprobe-") as tmp:
        inputs, request, result = Path(tmp, "inputs.npz"), Path(tmp, "request.json"), Path(tmp, "result.json")
        np.savez(inputs, **feed)
        request.write_text(json.dumps({"model": str(model_path), "inputs": str(inputs), "warmup": warmup,
                                       "runs": runs, "settings": settings.to_dict()}))
        proc = subprocess.run([sys.executable, "-m", "deploy._memprobe", str(request), str(result)],
                              capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0 or not result.is_file():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DeployError(f"{model_path}: memory probe process failed (exit {proc.returncode}: {tail}); "
                              "re-run with --no-memory to measure latency alone")
        return json.loads(result.read_text())


def model_flops(manifest: Manifest, batch: int, seq_len: int) -> int | None:
    """Return matmul FLOPs of one inference from the manifest's cost polynomial (None if absent)."""
    poly = manifest.extra.get("flops") if manifest.extra else None
    if not poly:
        return None
    return batch * (poly["per_token"] * seq_len + poly["per_token_pair"] * seq_len ** 2 + poly["per_sequence"])


def artifact_units(manifest: Manifest, seq: float) -> dict[str, Any] | None:
    """Return an artifact's shape for the latency table (``latency_table.artifact_shape``) and the
    tokens it was timed at (``seq``), None where its config.json does not record per-layer shapes."""
    from deploy.latency_table import artifact_shape

    try:
        return {**artifact_shape(manifest.folder), "seq": float(seq)}
    except InputError:
        return None


def _covers(table: Any, units: dict[str, Any]) -> bool:
    """Return True when ``table`` was measured for the artifact's width and covers its units."""
    try:
        table.check_shape(units["hidden"], units["head_size"], units["heads"], units["ffn"])
    except InputError:
        return False
    return True


def estimate_device_latency(profile, precision: str, settings, host_ms: float,
                            warnings: list[str] | None = None, flops: int | None = None,
                            units: dict[str, Any] | None = None) -> DeviceEstimate:
    """Return the device latency estimate for a host latency.

    With a latency table for ``precision`` whose fixed cost was measured (``sensibert-deploy
    calibrate --latency-table --artifact``) of the artifact's width and its ``units`` (``artifact_units``):
    on a host like the one the table was measured on, this host is the device and its measurement
    is the answer, tagged [M]; elsewhere the table's prediction for that shape, tagged [D] (its
    error against measurements: docs/latency.md). Else:
    With a calibration (the probe timed on the device): host latency × device probe / host probe,
    tagged [D]. Without one: the model's FLOPs ÷ the profile's sustained end-to-end rate, tagged
    [E] — the same arithmetic the budget used, so an uncalibrated plan is judged by its own
    prior. Scaling the host time by the probe's GEMM rate instead over-estimates badly where the
    host's GEMM kernels are much faster than its whole-encoder rate (AVX-512 VNNI hosts: 4×).
    Without FLOPs in the manifest, that probe ratio is the fallback.
    """
    from deploy.calibrate import DEFAULT_PROBE, host_description, run_probe
    from deploy.latency_table import predict, profile_tables

    tables = profile_tables(profile) or {}
    table = tables.get(precision)
    if table is not None and table.fixed_ms and units is not None and _covers(table, units):
        heads, ffn, seq = units["heads"], units["ffn"], units["seq"]
        if table.host == host_description():
            return DeviceEstimate(device=profile.id, latency_ms=host_ms, scale=1.0, method="measured", tag="[M]",
                                  probe="", host_probe_ms=0.0, host_probe_gops=0.0,
                                  note=f"measured here: this host ({table.host}) is the one profile {profile.id}'s "
                                       "latency table was measured on")
        predicted = predict(table, heads, ffn, seq)
        return DeviceEstimate(device=profile.id, latency_ms=predicted, scale=predicted / max(host_ms, 1e-9),
                              method="latency_table", tag="[D]", probe="", host_probe_ms=0.0, host_probe_gops=0.0,
                              note=f"predicted from the latency table measured on {table.host or 'the device'} at "
                                   f"{seq:g} tokens (sub-layers + fixed cost), not timed on the device itself")
    cal = profile.compute.calibration
    if cal is not None:
        host = run_probe(cal.probe, precision, settings)
        device_ms = cal.fp32_ms if precision == "fp32" else cal.int8_ms
        scale = device_ms / host.median_ms
        note = (f"host × {scale:.3g}: probe {cal.probe} {precision} took {device_ms:g} ms on the device "
                f"({cal.threads} threads, {cal.measured_on or 'device'}) vs {host.median_ms:.3g} ms here")
        if warnings is not None and cal.threads != profile.runtime.intra_op_threads:
            warnings.append(f"the device probe ran with {cal.threads} thread(s) but the profile's runtime uses "
                            f"{profile.runtime.intra_op_threads}: the estimate is for {cal.threads} thread(s); "
                            "re-run calibrate on the device with the profile's thread count")
        return DeviceEstimate(device=profile.id, latency_ms=host_ms * scale, scale=scale, method="calibration",
                              tag="[D]", probe=cal.probe, host_probe_ms=host.median_ms, host_probe_gops=host.gops,
                              device_probe_ms=device_ms, note=note)
    host = run_probe(DEFAULT_PROBE, precision, settings)
    rate = profile.compute.sustained(precision)
    if flops:
        latency = flops / (rate * 1e9) * 1e3
        note = (f"{flops / 1e9:.3g} GFLOP ÷ the profile's sustained {precision} rate {rate:g} GOP/s (a prior, "
                "not a measurement); run `sensibert-deploy calibrate` on the device")
        return DeviceEstimate(device=profile.id, latency_ms=latency, scale=latency / host_ms,
                              method="flops_over_sustained_rate", tag="[E]", probe=DEFAULT_PROBE,
                              host_probe_ms=host.median_ms, host_probe_gops=host.gops, device_rate_gops=rate,
                              note=note)
    scale = host.gops / rate
    note = (f"host × {scale:.3g}: host probe {host.gops:.3g} GOP/s vs the profile's sustained {precision} "
            f"rate {rate:g} GOP/s (a prior, not a measurement); run `sensibert-deploy calibrate` on the device")
    return DeviceEstimate(device=profile.id, latency_ms=host_ms * scale, scale=scale, method="sustained_rate",
                          tag="[E]", probe=DEFAULT_PROBE, host_probe_ms=host.median_ms, host_probe_gops=host.gops,
                          device_rate_gops=rate, note=note)


def _choose_precision(manifest: Manifest, profile, config: BenchConfig, warnings: list[str]) -> str:
    if config.precision:
        manifest.model_path(config.precision)  # raises, listing what the artifact has
        return config.precision
    wanted = profile.runtime.precision
    if wanted in manifest.models:
        return wanted
    chosen = manifest.default_precision()
    warnings.append(f"profile {profile.id} runs {wanted} but the artifact has only "
                    f"{', '.join(manifest.models)}; measured {chosen}")
    return chosen


def _choose_seq_len(manifest: Manifest, profile, config: BenchConfig, warnings: list[str]) -> int:
    if config.seq_len:
        if config.seq_len > manifest.max_length:
            raise InputError(f"seq_len {config.seq_len} exceeds the artifact's max_length {manifest.max_length}; "
                             f"pass --seq-len {manifest.max_length} or less")
        return config.seq_len
    # pairs and QA windows run at their task's own length (the manifest's), single sentences at the profile's
    wanted = profile.budget.seq_len if manifest.task_kind == "single" else manifest.max_length
    if wanted > manifest.max_length:
        warnings.append(f"profile {profile.id} budgets seq_len {wanted} but the artifact's max_length is "
                        f"{manifest.max_length}; measured at {manifest.max_length}")
        return manifest.max_length
    return max(wanted, MIN_SEQ_LEN)


# ---------------------------------------------------------------- checking against the budget


@dataclass(frozen=True)
class CheckItem:
    """One budget check with its numbers."""

    name: str
    passed: bool
    value: float
    limit: float
    unit: str
    detail: str = ""


@dataclass(frozen=True)
class CheckReport:
    """The bench result and the checks of it against the profile's budget."""

    result: BenchResult
    items: tuple[CheckItem, ...]

    @property
    def passed(self) -> bool:
        return all(item.passed for item in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "items": [dataclasses.asdict(i) for i in self.items],
                "result": self.result.to_dict()}


def check(artifact: str | os.PathLike | Manifest, profile, config: BenchConfig = BenchConfig()) -> CheckReport:
    """Verify the artifact's hashes, measure it, and compare memory and the latency estimate with the budget."""
    manifest = artifact if isinstance(artifact, Manifest) else read_manifest(artifact, verify=True)
    if not config.memory:
        raise InputError("check needs the memory measurement; do not disable it")
    result = measure(manifest, profile, dataclasses.replace(config, verify=False))
    items = [CheckItem("hashes", True, len(manifest.files), len(manifest.files), "files",
                       f"{len(manifest.files)} files match sensibert.json")]
    return CheckReport(result=result, items=tuple(items) + budget_checks(result, profile))


def budget_checks(result: BenchResult, profile, latency_target_ms: float | None = None,
                  estimate: DeviceEstimate | None = None, measure: str = "") -> tuple[CheckItem, ...]:
    """Return the checks of a measurement against the profile's budget: peak memory against the
    model's share of RAM, and the device latency estimate against the target (the profile's,
    or ``latency_target_ms``). ``estimate`` (with ``measure`` saying what it was measured on)
    replaces the fixed-shape estimate, e.g. one over real input lengths. The one copy of the
    device verdict, for `check` and `run`."""
    limit = profile.model_memory_bytes
    peak = result.peak_rss_bytes or 0
    memory = CheckItem("peak memory", peak <= limit, peak, limit, "bytes",
                       f"fresh-process peak RSS on this host vs the profile's model_memory_bytes "
                       f"({profile.budget.model_memory_fraction:g} × available RAM)")
    target = latency_target_ms or profile.budget.latency_target_ms
    est = estimate or result.estimate
    measure = measure or f"{result.seq_len} tokens, batch {result.batch}"
    latency = CheckItem(f"latency {est.tag}", est.latency_ms <= target, est.latency_ms, target, "ms",
                        f"p50 ({measure}) estimated for {profile.id} by {est.method.replace('_', ' ')}")
    return memory, latency


# ---------------------------------------------------------------- printing


def format_result(r: BenchResult, profile_name: str = "") -> str:
    """Return the human-readable table of a result; the JSON holds the same numbers unrounded."""
    session = ", ".join(f"{k}={v}" for k, v in r.session_config.items()) or "no session config entries"
    lines = [
        f"artifact  {r.artifact}/{r.model_file} ({r.precision}, sha256 {r.model_sha256[:12]}…)",
        f"profile   {r.profile_id}{f': {profile_name}' if profile_name else ''}",
        f"inputs    batch {r.batch} × {r.seq_len} tokens (fixed shape, tokenised text); "
        f"{r.n_warmup} warm-up + {r.n_runs} timed runs",
        f"session   {r.intra_op_threads} intra-op / {r.inter_op_threads} inter-op threads, {r.execution_mode}, "
        f"arena {'on' if r.enable_cpu_mem_arena else 'off'}, {session}",
        "",
        f"MEASURED ON THIS HOST: {r.host}, onnxruntime {r.ort_version}, {', '.join(r.providers)}",
        f"  load        {r.load_ms:10.1f} ms",
        f"  latency p50 {r.p50_ms:10.3f} ms   p90 {r.p90_ms:.3f}   p99 {r.p99_ms:.3f}   "
        f"mean {r.mean_ms:.3f} ± {r.std_ms:.3f} ms",
        f"  throughput  {r.throughput_per_s:10.1f} sequences/s",
    ]
    if r.peak_rss_bytes is not None:
        lines.append(f"  peak RSS    {_mib(r.peak_rss_bytes):10.1f} MiB  (fresh process, {r.peak_rss_source}; "
                     f"start {_mib(r.rss_start_bytes):.1f}, after import {_mib(r.rss_after_import_bytes):.1f}, "
                     f"after session {_mib(r.rss_after_session_bytes):.1f}, after runs "
                     f"{_mib(r.rss_after_runs_bytes):.1f} MiB)")
    else:
        lines.append("  peak RSS    not measured (--no-memory)")
    est = r.estimate
    what = {"measured": "MEASURED FOR", "latency_table": "PREDICTED FOR"}.get(est.method, "ESTIMATED FOR")
    lines += ["", f"{what} {r.profile_id} {est.tag}: p50 {est.latency_ms:.3f} ms",
              f"  {est.note}"]
    if r.warnings:
        lines += ["", "warnings:"] + [f"  - {w}" for w in r.warnings]
    return "\n".join(lines)


def format_check(report: CheckReport) -> str:
    """Return one PASS/FAIL line per check with its numbers."""
    lines = [f"CHECK against {report.result.profile_id}:"]
    for item in report.items:
        if item.unit == "files":
            lines.append(f"  {'PASS' if item.passed else 'FAIL'}  {item.name:<14} {item.detail}")
            continue
        if item.unit == "bytes":
            value, limit = f"{_mib(item.value):.1f} MiB", f"{_mib(item.limit):.1f} MiB"
        elif item.unit == "ms":
            value, limit = f"{item.value:.3f} ms", f"{item.limit:g} ms"
        else:
            value, limit = f"{item.value:g} {item.unit}", f"{item.limit:g} {item.unit}"
        relation = "≤" if item.passed else ">"
        lines.append(f"  {'PASS' if item.passed else 'FAIL'}  {item.name:<14} {value} {relation} {limit}  "
                     f"[{item.detail}]")
    lines.append("result: " + ("PASS" if report.passed else "FAIL"))
    return "\n".join(lines)


def _mib(n: float | None) -> float:
    return float("nan") if n is None else n / 2**20
