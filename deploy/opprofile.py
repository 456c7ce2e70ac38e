"""Where the time goes: onnxruntime's profiler on an artifact, summed per operator type.

A speed-up below the FLOPs cut means time is spent in work the FLOPs formula does not count
(LayerNorm, Gelu, quantise/dequantise, the attention's softmax, the launch of each kernel).
This runs the artifact with onnxruntime's own profiler (``SessionOptions.enable_profiling``),
reads its Chrome-trace JSON and reports, per operator type, milliseconds per run, share of
the run and kernel calls per run. The remainder of a run that no kernel covers is reported as
``(between kernels)``, so the rows sum to the measured run time.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from deploy.errors import InputError

BETWEEN = "(between kernels)"


@dataclass(frozen=True)
class OpTime:
    """One operator type's time per run (mean over the timed runs)."""

    op_type: str
    ms: float
    share: float      # of the profiler's run time
    calls: float      # kernel calls per run


@dataclass(frozen=True)
class OpProfile:
    """The operator profile of one artifact at one input shape and thread count."""

    artifact: str
    precision: str
    model_file: str
    batch: int
    seq_len: int
    threads: int
    runs: int
    run_ms: float         # mean of onnxruntime's own model_run durations
    wall_ms: float        # mean of session.run as timed here (includes the Python call)
    ops: tuple[OpTime, ...]

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["ops"] = [asdict(o) for o in self.ops]
        return body

    def kernel_ms(self) -> float:
        """Return the time covered by kernels (every row but the between-kernels remainder)."""
        return sum(o.ms for o in self.ops if o.op_type != BETWEEN)


def summarise_trace(events: list[dict[str, Any]], skip_runs: int = 0) -> tuple[list[float], dict[str, list[float]]]:
    """Return (each run's duration in ms, {op type: [ms, calls] summed over the runs kept}).

    Runs are onnxruntime's ``model_run`` session events; a node event belongs to the run whose
    interval holds its start. The first ``skip_runs`` runs (warm-up) are left out.
    """
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")[skip_runs:]
    per_op: dict[str, list[float]] = {}
    if not runs:
        return [], per_op
    nodes = sorted((e["ts"], e["dur"], e.get("args", {}).get("op_name", "?")) for e in events
                   if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"))
    i = 0
    for ts, dur, op in nodes:
        while i < len(runs) and ts >= runs[i][1]:
            i += 1
        if i == len(runs):
            break
        if ts < runs[i][0]:
            continue  # a warm-up run's kernel
        acc = per_op.setdefault(op, [0.0, 0.0])
        acc[0] += dur / 1e3
        acc[1] += 1
    return [(b - a) / 1e3 for a, b in runs], per_op


def profile_run(artifact: str | os.PathLike, precision: Optional[str] = None, seq_len: Optional[int] = None,
                batch: int = 1, threads: int = 1, runs: int = 20, warmup: int = 5, runtime: Any = None) -> OpProfile:
    """Return the operator profile of ``artifact`` over ``runs`` timed runs of fixed-shape input.

    ``seq_len`` defaults to the artifact's own ``max_length``; ``runtime`` (a profile's runtime
    block) sets the session options, as ``deploy bench`` does.
    """
    from deploy.manifest import read_manifest
    from deploy.predict import bench_inputs
    from deploy.predict import load_tokenizer, session_feed
    from deploy.session import open_session, session_settings, timed_runs

    if runs < 1 or warmup < 0 or batch < 1 or threads < 1:
        raise InputError("--runs, --batch and --threads must be >= 1 and --warmup >= 0; pass positive counts")
    manifest = read_manifest(artifact, verify=False)
    precision = precision or manifest.default_precision()
    seq_len = seq_len or int(manifest.max_length or 128)
    model_path = manifest.runnable_model(precision)
    settings = session_settings(runtime, threads)
    with tempfile.TemporaryDirectory(prefix="sensibert-profile-") as tmp:
        session = open_session(model_path, settings=settings, profile_prefix=str(Path(tmp) / "ort"))
        tokenizer = load_tokenizer(manifest)
        feed = session_feed(session, bench_inputs(tokenizer, manifest.task_kind, batch, seq_len), str(model_path))
        walls = timed_runs(session, [feed] * runs, warmup)
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
    durations, per_op = summarise_trace(events, skip_runs=warmup)
    if len(durations) != runs:
        raise InputError(f"onnxruntime's profile holds {len(durations)} timed runs, not {runs}; "
                         "rerun with fewer --runs (its trace buffer may be full)")
    run_ms = statistics.fmean(durations)
    ops = [OpTime(op, ms / runs, (ms / runs) / run_ms, calls / runs) for op, (ms, calls) in per_op.items()]
    covered = sum(o.ms for o in ops)
    ops.append(OpTime(BETWEEN, max(run_ms - covered, 0.0), max(run_ms - covered, 0.0) / run_ms, 0.0))
    ops.sort(key=lambda o: -o.ms)
    return OpProfile(artifact=str(manifest.folder), precision=precision, model_file=manifest.models[precision],
                     batch=batch, seq_len=seq_len, threads=settings.intra_op_threads, runs=runs,
                     run_ms=run_ms, wall_ms=statistics.fmean(walls), ops=tuple(ops))


def format_profile(p: OpProfile) -> str:
    """Return the profile as a table: one row per operator type, largest first."""
    lines = [f"{p.model_file}: batch {p.batch}, {p.seq_len} tokens, {p.threads} thread(s), {p.runs} runs; "
             f"run {p.run_ms:.3f} ms (profiler), {p.wall_ms:.3f} ms (wall, profiling on)",
             f"{'operator':<28} {'ms/run':>9} {'share':>7} {'calls':>6}"]
    for o in p.ops:
        calls = f"{o.calls:6.0f}" if o.op_type != BETWEEN else f"{'':>6}"
        lines.append(f"{o.op_type:<28} {o.ms:9.3f} {100 * o.share:6.1f}% {calls}")
    return "\n".join(lines)
