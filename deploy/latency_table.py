"""Measured latency tables: what one attention block with h heads and one FFN block with n
neurons cost on a device, per precision and sequence length, and the model they predict with.

FLOPs mislead at real input lengths: every kernel call carries a fixed cost that does not
shrink with heads and neurons (docs/latency.md, Step 9). So a table holds, per precision and
sequence length, the time of the encoder's sub-layers measured as the shipped graph computes
them (``deploy.blocks``: fused Attention / QAttention, BiasGelu, per-channel dynamic int8):

- ``attn[h]`` and ``ffn[n]``: one sub-layer with h heads / n neurons, on a grid that includes
  0 (the block removed: only LayerNorm(x + b) is left);
- ``fixed``: everything else of the model (embeddings, the head, session overhead), measured
  as the whole artifact's time minus its sub-layers' predicted time, when calibrate is given
  an artifact; else 0 and the prediction covers the encoder only (the table says which).

``predict`` sums them; ``interpolate`` is piecewise linear between grid points (exact on them,
monotone between them). Tables are versioned JSON files with the host, onnxruntime version and
session settings they were measured with: a table from other settings warns, one from another
model width (hidden, head size) is refused.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from deploy.errors import InputError

TABLE_SCHEMA = "sensibert.latency_table"
TABLE_VERSION = 1
KINDS = ("attn", "ffn")


@dataclass(frozen=True)
class LatencyTable:
    """Sub-layer latencies (ms, median of timed runs, batch 1) of one model width on one device."""

    hidden: int
    head_size: int
    max_heads: int
    max_ffn: int
    precision: str
    seq_lens: tuple[int, ...]
    grid: dict[str, tuple[int, ...]]                   # kind -> unit counts measured (ascending, 0 first)
    ms: dict[str, dict[int, tuple[float, ...]]]        # kind -> seq_len -> ms per grid point
    fixed_ms: dict[int, float] = field(default_factory=dict)  # seq_len -> embeddings + head + overhead
    fixed_from: str = ""                               # the artifact(s) the fixed cost was measured on ("": none)
    scale: dict[int, float] = field(default_factory=dict)  # seq_len -> in-graph / isolated sub-layer time (fit)
    kind_scale: dict[str, dict[int, float]] = field(default_factory=dict)  # kind -> seq_len -> the same, per kind
    host: str = ""
    runtime: dict[str, Any] = field(default_factory=dict)  # onnxruntime version and session settings
    tag: str = "[M]"

    def __post_init__(self) -> None:
        for kind in KINDS:
            points = self.grid.get(kind, ())
            if not points or points[0] != 0 or list(points) != sorted(set(points)):
                raise InputError(f"latency table: the {kind} grid {list(points)} must start at 0 and ascend; "
                                 "re-run sensibert-deploy calibrate --latency-table")
            for seq in self.seq_lens:
                values = self.ms.get(kind, {}).get(seq)
                if values is None or len(values) != len(points):
                    raise InputError(f"latency table: {kind} at {seq} tokens has no value per grid point; "
                                     "re-run sensibert-deploy calibrate --latency-table")

    # -- prediction

    def block_ms(self, kind: str, units: int, seq: int) -> float:
        """Return one sub-layer's predicted time with ``units`` heads or neurons at ``seq`` tokens."""
        top = self.max_heads if kind == "attn" else self.max_ffn
        if not 0 <= units <= top or units > self.grid[kind][-1]:
            raise InputError(f"latency table covers {kind} up to {self.grid[kind][-1]} units, the model has "
                             f"{units}; re-run sensibert-deploy calibrate --latency-table for this model")
        return self.scale_at(seq, kind) * interpolate_2d(self.grid[kind], self.seq_lens, self.ms[kind], units, seq)

    def scale_at(self, seq: int, kind: str | None = None) -> float:
        """Return how much slower a sub-layer (of ``kind``, where fitted per kind) runs inside the
        whole graph than alone (1: not fitted)."""
        scale = self.kind_scale.get(kind) or self.scale if kind else self.scale
        if not scale:
            return 1.0
        lens = sorted(scale)
        return interpolate(lens, [scale[s] for s in lens], seq)

    def fixed(self, seq: int) -> float:
        """Return the predicted time outside the encoder's sub-layers (0 when not measured)."""
        if not self.fixed_ms:
            return 0.0
        lens = sorted(self.fixed_ms)
        return interpolate(lens, [self.fixed_ms[s] for s in lens], seq)

    def check_shape(self, hidden: int, head_size: int, heads: Sequence[int], ffn: Sequence[int]) -> None:
        """Raise InputError when the table was measured for another width or does not cover the shape."""
        if (hidden, head_size) != (self.hidden, self.head_size):
            raise InputError(f"the latency table was measured for hidden {self.hidden}, head size {self.head_size}, "
                             f"the model has {hidden} and {head_size}; calibrate a table for this model")
        if max(heads, default=0) > self.grid["attn"][-1] or max(ffn, default=0) > self.grid["ffn"][-1]:
            raise InputError(f"the latency table's grid (heads ≤ {self.grid['attn'][-1]}, FFN ≤ "
                             f"{self.grid['ffn'][-1]}) does not cover the model (heads {max(heads)}, FFN {max(ffn)}); "
                             "calibrate a table for this model")

    def to_dict(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["ms"] = {k: {str(s): list(v) for s, v in per.items()} for k, per in self.ms.items()}
        body["fixed_ms"] = {str(s): v for s, v in self.fixed_ms.items()}
        body["scale"] = {str(s): v for s, v in self.scale.items()}
        body["kind_scale"] = {k: {str(s): v for s, v in per.items()} for k, per in self.kind_scale.items()}
        body["grid"] = {k: list(v) for k, v in self.grid.items()}
        body["seq_lens"] = list(self.seq_lens)
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any], origin: str = "latency table") -> "LatencyTable":
        try:
            return cls(hidden=int(body["hidden"]), head_size=int(body["head_size"]), max_heads=int(body["max_heads"]),
                       max_ffn=int(body["max_ffn"]), precision=str(body["precision"]),
                       seq_lens=tuple(int(s) for s in body["seq_lens"]),
                       grid={k: tuple(int(u) for u in v) for k, v in body["grid"].items()},
                       ms={k: {int(s): tuple(float(x) for x in v) for s, v in per.items()}
                           for k, per in body["ms"].items()},
                       fixed_ms={int(s): float(v) for s, v in (body.get("fixed_ms") or {}).items()},
                       fixed_from=str(body.get("fixed_from", "")), host=str(body.get("host", "")),
                       scale={int(s): float(v) for s, v in (body.get("scale") or {}).items()},
                       kind_scale={str(k): {int(s): float(v) for s, v in per.items()}
                                   for k, per in (body.get("kind_scale") or {}).items()},
                       runtime=dict(body.get("runtime") or {}), tag=str(body.get("tag", "[M]")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{origin}: malformed latency table ({type(exc).__name__}: {exc}); re-run "
                             "sensibert-deploy calibrate --latency-table") from None


def layer_removed(heads: int, ffn: int) -> bool:
    """Return True for a layer with no head and no neuron: it is the identity, so neither the
    trimmed model (toolchain/modeling.py) nor its graph has it, and it costs nothing."""
    return heads == 0 and ffn == 0


def graph_layers(heads: Sequence[int], ffn: Sequence[int]) -> list[tuple[int, int, int]]:
    """Return (index, heads, ffn) of the layers a model's graph holds (removed layers left out)."""
    return [(i, h, f) for i, (h, f) in enumerate(zip(heads, ffn)) if not layer_removed(h, f)]


def predict(table: LatencyTable, heads: Sequence[int], ffn: Sequence[int], seq: int) -> float:
    """Return the predicted latency (ms, batch 1) of a model with these per-layer units: the fixed
    part plus the two sub-layers of every layer the graph holds."""
    return table.fixed(seq) + sum(table.block_ms("attn", h, seq) + table.block_ms("ffn", f, seq)
                                  for _, h, f in graph_layers(heads, ffn))


# ---------------------------------------------------------------- interpolation (pure)

def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Return the piecewise-linear interpolation of (xs, ys) at ``x``: exact on grid points,
    monotone between two of them, held at the end values outside the grid."""
    if not xs or len(xs) != len(ys):
        raise ValueError("need one y per x and at least one point")
    if x <= xs[0]:
        return float(ys[0])
    if x >= xs[-1]:
        return float(ys[-1])
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def interpolate_2d(units: Sequence[int], seqs: Sequence[int], ms: dict[int, Sequence[float]],
                   u: float, seq: float) -> float:
    """Return the table's value at (u units, seq tokens): linear in units at the two nearest
    measured lengths, then linear in length between them."""
    lens = sorted(seqs)
    at = [interpolate(units, ms[s], u) for s in lens]
    return interpolate(lens, at, seq)


# ---------------------------------------------------------------- files

def write_table(tables: dict[str, LatencyTable], path: str | os.PathLike) -> Path:
    """Write the tables (one per precision) atomically as versioned JSON."""
    from deploy.artifacts import write_json

    return write_json(Path(path), TABLE_SCHEMA, TABLE_VERSION, {"tables": {p: t.to_dict() for p, t in tables.items()}})


def read_table(path: str | os.PathLike) -> dict[str, LatencyTable]:
    """Read a latency table file; a missing, damaged or foreign file is one InputError line."""
    from deploy.artifacts import read_json

    body = read_json(path, TABLE_SCHEMA, TABLE_VERSION).get("tables")
    if not isinstance(body, dict) or not body:
        raise InputError(f"{path}: the latency table holds no precision; re-run sensibert-deploy calibrate "
                         "--latency-table")
    return {p: LatencyTable.from_dict(t, origin=str(path)) for p, t in body.items()}


def runtime_mismatch(table: LatencyTable, runtime: dict[str, Any]) -> list[str]:
    """Return what differs between the runtime a table was measured with and ``runtime``."""
    return [f"{k} {table.runtime.get(k)!r} (table) vs {runtime.get(k)!r} (now)"
            for k in sorted(set(table.runtime) | set(runtime)) if table.runtime.get(k) != runtime.get(k)]


# ---------------------------------------------------------------- measurement (on the device)

DEFAULT_SEQ_LENS = (16, 32, 64, 128)


def default_grid(size: int, kind: str) -> tuple[int, ...]:
    """Return the unit counts to time: every head count (few), and for FFN widths 0, 1, a
    geometric ladder and the dense width (fine where small blocks change fastest)."""
    if kind == "attn":
        return tuple(range(size + 1))
    points = {0, 1, size}
    width = 8
    while width < size:
        points.add(width)
        width *= 2
    points.update(round(size * f) for f in (0.375, 0.625, 0.75, 0.875))
    return tuple(sorted(p for p in points if 0 <= p <= size))


def measure_table(settings: Any, hidden: int, head_size: int, max_heads: int, max_ffn: int, precision: str,
                  seq_lens: Sequence[int] = DEFAULT_SEQ_LENS, runs: int = 20, warmup: int = 3,
                  grid: dict[str, Sequence[int]] | None = None, progress: Any = None) -> LatencyTable:
    """Return the table of one precision: every grid point's sub-layer timed at every length with
    the session ``settings`` (median of ``runs``). ``progress`` is called once per block timed."""
    import statistics

    from deploy.blocks import block_inputs, block_model
    from deploy.session import open_session, timed_runs

    grid = {k: tuple(sorted(set(grid[k]))) for k in KINDS} if grid else \
        {"attn": default_grid(max_heads, "attn"), "ffn": default_grid(max_ffn, "ffn")}
    ms: dict[str, dict[int, list[float]]] = {k: {s: [] for s in seq_lens} for k in KINDS}
    for kind in KINDS:
        feeds = {seq: [block_inputs(hidden, 1, seq, kind=kind)] * runs for seq in seq_lens}
        for units in grid[kind]:
            session = open_session(block_model(kind, units, hidden, head_size, precision), settings=settings)
            for seq in seq_lens:
                ms[kind][seq].append(round(statistics.median(timed_runs(session, feeds[seq], warmup)), 5))
            if progress is not None:
                progress()
    for per in ms.values():
        for row in per.values():
            monotone_from_above(row)
    return LatencyTable(hidden=hidden, head_size=head_size, max_heads=max_heads, max_ffn=max_ffn,
                        precision=precision, seq_lens=tuple(seq_lens), grid=grid,
                        ms={k: {s: tuple(v) for s, v in per.items()} for k, per in ms.items()},
                        runtime=runtime_record(settings))


def monotone_from_above(row: list[float]) -> None:
    """Make ``row`` (times by growing unit count) non-decreasing in place, each point lowered to
    the smallest time at or above it: a block with fewer heads or neurons does no more work, so a
    point above a larger one is timing noise (a cold first session, a busy core), and left in it
    would make removing units look like it costs time."""
    for i in range(len(row) - 2, -1, -1):
        row[i] = min(row[i], row[i + 1])


def runtime_record(settings: Any) -> dict[str, Any]:
    """Return what a table's timings depend on besides the hardware: runtime version and settings."""
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "intra_op_threads": settings.intra_op_threads,
            "inter_op_threads": settings.inter_op_threads, "execution_mode": settings.execution_mode,
            "session_config": dict(sorted((settings.session_config or {}).items()))}


def with_fixed_cost(table: LatencyTable, measured: Sequence[tuple[dict[int, float], Sequence[int], Sequence[int]]],
                    source: str) -> LatencyTable:
    """Return ``table`` with its fixed cost (embeddings, head, per-call overhead) and the scale of
    sub-layers inside the whole graph against timed alone, fitted per length by least squares on
    the artifacts (``measured``: (ms by length, heads, ffn) each):

    - three or more artifacts whose attention and FFN shares differ: measured = fixed +
      k_attn · Σ attention sub-layers + k_ffn · Σ FFN sub-layers (attention and FFN kernels do
      not slow down alike inside a graph: one scale over-predicts attention-light plans);
    - two: measured = fixed + k · Σ sub-layers; one: k = 1, fixed the rest.

    The fixed part may come out negative: each sub-layer timed alone carries one session call's
    overhead that the whole graph pays once, so Σ isolated sub-layers over-counts it. A fit whose
    scale comes out ≤ 0.1 (unphysical) falls back to the next simpler one."""
    base = dataclasses.replace(table, fixed_ms={}, scale={}, kind_scale={})
    fixed: dict[int, float] = {}
    scale: dict[int, float] = {}
    kinds: dict[str, dict[int, float]] = {k: {} for k in KINDS}
    for seq in table.seq_lens:
        points = [(sum(base.block_ms("attn", h, seq) for _, h, _ in graph_layers(heads, ffn)),
                   sum(base.block_ms("ffn", f, seq) for _, _, f in graph_layers(heads, ffn)), ms[seq])
                  for ms, heads, ffn in measured if seq in ms]
        if not points:
            continue
        fit = _fit_per_kind(points) if len(points) >= 3 else None
        if fit is not None:
            fixed[seq], kinds["attn"][seq], kinds["ffn"][seq] = (round(v, 5) for v in fit)
            scale[seq] = round((fit[1] + fit[2]) / 2, 5)
            continue
        k = _fit_one_scale([(a + f, y) for a, f, y in points]) if len(points) >= 2 else 1.0
        fixed[seq], scale[seq] = round(sum(y - k * (a + f) for a, f, y in points) / len(points), 5), round(k, 5)
    per_kind = {k: v for k, v in kinds.items() if v and len(v) == len(fixed)}
    return dataclasses.replace(table, fixed_ms=fixed, scale=scale if len(measured) >= 2 else {},
                               kind_scale=per_kind if len(per_kind) == len(KINDS) else {}, fixed_from=source)


def _fit_one_scale(points: Sequence[tuple[float, float]]) -> float:
    """Return the least-squares slope of y on x (at least 0.1; 1 where x does not vary)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var <= 0:
        return 1.0
    return max(0.1, sum((x - mx) * (y - my) for x, y in points) / var)


def _fit_per_kind(points: Sequence[tuple[float, float, float]]) -> tuple[float, float, float] | None:
    """Return (fixed, k_attn, k_ffn) fitting y = fixed + k_attn·a + k_ffn·f, or None where the
    artifacts do not separate the two kinds or a scale is unphysical."""
    import numpy as np

    design = np.array([[1.0, a, f] for a, f, _ in points])
    if np.linalg.matrix_rank(design) < 3:
        return None
    solution, *_ = np.linalg.lstsq(design, np.array([y for *_, y in points]), rcond=None)
    fixed, k_attn, k_ffn = (float(v) for v in solution)
    if k_attn <= 0.1 or k_ffn <= 0.1:
        return None
    return fixed, k_attn, k_ffn


def artifact_ms(artifact: str | os.PathLike, precision: str, settings: Any, seq_lens: Sequence[int],
                runs: int = 20, warmup: int = 3) -> dict[int, float]:
    """Return the median time (ms, batch 1) of an artifact's model at each length, timed as
    ``sensibert-deploy bench`` times it."""
    import statistics

    from deploy.manifest import read_manifest
    from deploy.predict import bench_inputs
    from deploy.predict import load_tokenizer, session_feed
    from deploy.session import open_session, timed_runs

    manifest = read_manifest(artifact, verify=False)
    path = manifest.runnable_model(precision)
    session = open_session(path, settings=settings)
    tokenizer = load_tokenizer(manifest)
    out = {}
    for seq in seq_lens:
        feed = session_feed(session, bench_inputs(tokenizer, manifest.task_kind, 1, seq), str(path))
        out[seq] = round(statistics.median(timed_runs(session, [feed] * runs, warmup)), 5)
    return out


def artifact_shape(artifact: str | os.PathLike) -> dict[str, Any]:
    """Return an artifact's width and per-layer units (hidden, head_size, heads, ffn), read from
    its config.json (where the export records the per-layer shapes under ``sensibert``)."""
    path = Path(artifact) / "config.json"
    try:
        config = json.loads(path.read_text())
        hidden = int(config["hidden_size"])
        shapes = config["sensibert"]
        return {"hidden": hidden, "head_size": hidden // int(config["num_attention_heads"]),
                "heads": [int(h) for h in shapes["heads_per_layer"]], "ffn": [int(f) for f in shapes["ffn_per_layer"]]}
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{artifact}: config.json does not record the per-layer shapes; pass an artifact "
                         "folder written by sensibert export") from None


def table_path_for(profile_file: str | os.PathLike) -> Path:
    """Return the latency table file that goes with a profile file (``<stem>.latency.json``)."""
    path = Path(profile_file)
    return path.with_name(path.name.split(".")[0] + ".latency.json")


DEFAULT_WIDTH = (384, 32, 1536)  # the packaged MiniLM-L6: hidden, head size, FFN width


def calibrate_table(profile: Any, out: str | os.PathLike, *, artifact: str | Sequence[str] | None = None,
                    width: tuple[int, int, int] | None = None, seq_lens: Sequence[int] | None = None,
                    threads: int | None = None, runs: int = 20, progress: bool = True) -> dict[str, LatencyTable]:
    """Measure the latency table of a profile's runtime settings on this machine (fp32, and int8
    as the profile ships it) and write it to ``out``; with ``artifact`` (one folder or several of
    the same model trimmed differently) the width is the artifacts' and their whole-model times
    give the fixed cost (and, from two or more, the in-graph scale)."""
    from deploy.session import session_settings

    from deploy.calibrate import host_description
    from deploy.manifest import read_manifest

    artifacts = [artifact] if isinstance(artifact, (str, os.PathLike)) else list(artifact or [])
    seq_lens = tuple(seq_lens or DEFAULT_SEQ_LENS)
    # every artifact's shape and precisions read (and checked to be one model) before any timing
    shapes = {str(a): artifact_shape(a) for a in artifacts}
    precisions = {str(a): read_manifest(a, verify=False).models for a in artifacts}
    if artifacts:
        first = shapes[str(artifacts[0])]
        hidden, head_size = int(first["hidden"]), int(first["head_size"])
        width = (hidden, head_size, max(max(first["ffn"]), 4 * hidden))
        for art, own in shapes.items():
            if (own["hidden"], own["head_size"]) != (hidden, head_size):
                raise InputError(f"{art}: hidden {own['hidden']}, head size {own['head_size']}, but {artifacts[0]} "
                                 f"has {hidden} and {head_size}; pass artifacts of one model")
    hidden, head_size, max_ffn = width or DEFAULT_WIDTH
    max_heads = hidden // head_size
    settings = session_settings(profile.runtime, threads)
    grid_size = len(default_grid(max_heads, "attn")) + len(default_grid(max_ffn, "ffn"))
    bar = _bar(2 * grid_size, progress)
    tables = {}
    for precision in ("fp32", "int8"):
        table = measure_table(settings, hidden, head_size, max_heads, max_ffn, precision, seq_lens, runs,
                              progress=bar.update if bar else None)
        measured = [(artifact_ms(art, precision, settings, seq_lens, runs), shapes[art]["heads"], shapes[art]["ffn"])
                    for art in shapes if precision in precisions[art]]
        if measured:
            table = with_fixed_cost(table, measured, ", ".join(shapes))
        tables[precision] = dataclasses.replace(table, host=host_description())
    if bar:
        bar.close()
    write_table(tables, out)
    return tables


def _bar(total: int, show: bool) -> Any:
    """Return a tqdm bar over the blocks timed (tqdm is optional on the device), or None."""
    if not show:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="latency table", unit="block", leave=False)


def profile_tables(profile: Any) -> dict[str, LatencyTable] | None:
    """Return the latency tables a profile names (``compute.latency_table``, beside its file), or None."""
    name = getattr(profile.compute, "latency_table", None)
    if not name:
        return None
    base = Path(profile.path).parent if profile.path else Path.cwd()
    if not (base / name).is_file():
        raise InputError(f"profile {profile.id} names latency table {name}, which is not beside it in {base}; copy "
                         "the table there or re-run sensibert-deploy calibrate --latency-table")
    return read_table(base / name)
