"""Latency at the lengths users send: each input at its own token count, batch 1 (dynamic shapes).

A fixed 128-token figure hides what a short-sentence task costs: SST-2 sentences are about 25
tokens, where attention and the fixed per-kernel costs weigh differently than at 128. This
runs every input of a real file through the session at its own length and reports the
percentiles over that distribution, plus one latency per length bucket. For batched serving,
``pad_to_buckets`` pads each input up to its bucket's upper bound and groups ``batch``
inputs of one bucket per run, as a length-bucketing server does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from deploy.errors import InputError

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class LengthBenchConfig:
    """What to run over the inputs; threads and precision as ``deploy bench`` takes them."""

    precision: str | None = None
    threads: int | None = None
    max_inputs: int | None = None         # the first N usable inputs (default: all)
    warmup: int = 10                      # untimed inputs first (the first ones, run once more)
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    pad_to_buckets: bool = False          # batched serving: pad to the bucket bound
    batch: int = 1                        # inputs per run (needs pad_to_buckets when > 1)

    def __post_init__(self) -> None:
        if not self.buckets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.buckets) \
                or list(self.buckets) != sorted(set(self.buckets)):
            raise InputError(f"--buckets {','.join(map(str, self.buckets))} must be increasing whole numbers "
                             "≥ 1, e.g. 16,32,64,128")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise InputError(f"--batch {self.batch} must be a whole number ≥ 1")
        if self.batch > 1 and not self.pad_to_buckets:
            raise InputError("--batch > 1 over real inputs needs --pad-to-buckets (inputs of one bucket share a "
                             "padded length); add it, or use --batch 1")
        if self.max_inputs is not None and self.max_inputs < 1:
            raise InputError(f"--max-inputs {self.max_inputs} must be ≥ 1")
        if self.warmup < 0:
            raise InputError(f"--warmup {self.warmup} must be ≥ 0")


@dataclass(frozen=True)
class BucketLatency:
    """Latency of the inputs whose token count falls in (previous bound, ``upto``]."""

    upto: int
    inputs: int
    mean_tokens: float
    p50_ms: float
    p90_ms: float
    mean_ms: float


@dataclass(frozen=True)
class LengthBenchResult:
    """Latency over a real length distribution: per input (batch 1) or per padded batch."""

    artifact: str
    model_file: str
    precision: str
    source: str
    inputs: int
    truncated: int
    tokens_mean: float
    tokens_p50: float
    tokens_p90: float
    tokens_max: int
    batch: int
    padded_to_buckets: bool
    intra_op_threads: int
    p50_ms: float            # per run (one input at batch 1)
    p90_ms: float
    p99_ms: float
    mean_ms: float
    ms_per_input: float      # mean run time ÷ inputs per run
    buckets: tuple[BucketLatency, ...]
    host: str
    warnings: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _bucket_of(n: int, buckets: Sequence[int]) -> int:
    return next((b for b in buckets if n <= b), buckets[-1])


def measure_lengths(artifact: str | os.PathLike, items: Sequence[Any], runtime: Any = None,
                    config: LengthBenchConfig = LengthBenchConfig(), source: str = "") -> LengthBenchResult:
    """Return latency over ``items`` (texts, or pairs for pair/QA artifacts) at their own lengths.

    ``runtime`` is a profile's runtime block (session options, threads); ``config.threads``
    overrides its thread count.
    """
    import numpy as np

    from deploy.calibrate import host_description
    from deploy.manifest import read_manifest
    from deploy.predict import encode, load_tokenizer, session_feed
    from deploy.session import open_session, session_settings, timed_runs

    manifest = read_manifest(artifact, verify=False)
    precision = config.precision or manifest.default_precision()
    items = list(items)[: config.max_inputs] if config.max_inputs else list(items)
    if not items:
        raise InputError(f"{source or 'the input'}: no usable input; pass a file with one input per line")
    tokenizer = load_tokenizer(manifest)
    settings = session_settings(runtime, config.threads)
    model_path = manifest.runnable_model(precision)
    session = open_session(model_path, settings=settings)
    buckets = tuple(b for b in config.buckets if b < manifest.max_length) + (manifest.max_length,)
    runs: list[tuple[int, dict[str, Any], int]] = []  # (bucket, feed, inputs in it)
    tokenizer.enable_truncation(manifest.max_length)
    try:
        encoded = [encode(tokenizer, [item]) for item in items]
        lengths = [int(arrays["input_ids"].shape[1]) for arrays, _ in encoded]
        bucket = [_bucket_of(n, buckets) for n in lengths]
        if config.pad_to_buckets:  # inputs of one bucket padded to its bound, config.batch per run
            for b in buckets:
                idx = [i for i, bb in enumerate(bucket) if bb == b]
                for k in range(0, len(idx), config.batch):
                    chunk = [items[i] for i in idx[k:k + config.batch]]
                    runs.append((b, session_feed(session, encode(tokenizer, chunk, pad_to=b)[0], str(model_path)),
                                 len(chunk)))
        else:
            runs = [(b, session_feed(session, arrays, str(model_path)), 1) for b, (arrays, _) in zip(bucket, encoded)]
    finally:
        tokenizer.no_truncation()
    truncated = sum(1 for _, t in encoded if t[0])
    times = timed_runs(session, [feed for _, feed, _ in runs], config.warmup)
    del session

    per_bucket = []
    for b in buckets:
        sel = [i for i, (bb, _, _) in enumerate(runs) if bb == b]
        if not sel:
            continue
        ts = [times[i] for i in sel]
        toks = [n for n, bb in zip(lengths, bucket) if bb == b]
        per_bucket.append(BucketLatency(upto=b, inputs=sum(runs[i][2] for i in sel), mean_tokens=statistics.fmean(toks),
                                        p50_ms=float(np.percentile(ts, 50)), p90_ms=float(np.percentile(ts, 90)),
                                        mean_ms=statistics.fmean(ts)))
    p50, p90, p99 = (float(v) for v in np.percentile(times, [50, 90, 99]))
    warnings = list(settings.warnings)
    if truncated:
        warnings.append(f"{truncated} input(s) longer than max_length {manifest.max_length} were truncated")
    return LengthBenchResult(
        artifact=str(manifest.folder), model_file=manifest.models[precision], precision=precision,
        source=source, inputs=len(items), truncated=truncated, tokens_mean=statistics.fmean(lengths),
        tokens_p50=float(np.percentile(lengths, 50)), tokens_p90=float(np.percentile(lengths, 90)),
        tokens_max=max(lengths), batch=config.batch, padded_to_buckets=config.pad_to_buckets,
        intra_op_threads=settings.intra_op_threads, p50_ms=p50, p90_ms=p90, p99_ms=p99,
        mean_ms=statistics.fmean(times), ms_per_input=sum(times) / len(items), buckets=tuple(per_bucket),
        host=host_description(), warnings=tuple(warnings))


def format_lengths(r: LengthBenchResult) -> str:
    """Return the result as a short table: distribution, percentiles, then one row per bucket."""
    lines = [f"{r.model_file} over {r.inputs} real inputs from {r.source or 'the input'} ({r.precision}, "
             f"{r.intra_op_threads} thread(s), batch {r.batch}{', padded to buckets' if r.padded_to_buckets else ''})",
             f"  tokens: mean {r.tokens_mean:.1f}, p50 {r.tokens_p50:.0f}, p90 {r.tokens_p90:.0f}, max {r.tokens_max}"
             + (f"; {r.truncated} truncated" if r.truncated else ""),
             f"  latency per run: p50 {r.p50_ms:.2f} ms, p90 {r.p90_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, "
             f"mean {r.mean_ms:.2f} ms; {r.ms_per_input:.2f} ms per input",
             f"  {'tokens ≤':>9} {'inputs':>7} {'mean tok':>9} {'p50 ms':>8} {'p90 ms':>8}"]
    for b in r.buckets:
        lines.append(f"  {b.upto:>9} {b.inputs:>7} {b.mean_tokens:>9.1f} {b.p50_ms:>8.2f} {b.p90_ms:>8.2f}")
    lines += [f"  warning: {w}" for w in r.warnings]
    return "\n".join(lines)


def device_estimate(result: LengthBenchResult, profile: Any) -> Any:
    """Return the device latency estimate of a real-length measurement: its host p50 scaled as
    ``deploy bench`` scales a fixed-shape one, with the model's FLOPs at the median input length."""
    from deploy.manifest import read_manifest
    from deploy.measure import artifact_units, estimate_device_latency, model_flops
    from deploy.session import session_settings

    manifest = read_manifest(result.artifact, verify=False)
    flops = model_flops(manifest, 1, max(1, round(result.tokens_p50)))
    return estimate_device_latency(profile, result.precision, session_settings(profile.runtime, result.intra_op_threads),
                                   result.p50_ms, flops=flops, units=artifact_units(manifest, result.tokens_mean))


def describe(result: LengthBenchResult) -> str:
    """Return the measure's one-line name, as checks and reports state it."""
    return (f"{result.inputs} real inputs at their own lengths (mean {result.tokens_mean:.1f} tokens), "
            f"batch {result.batch}")
