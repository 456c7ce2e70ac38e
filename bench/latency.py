"""Latency benchmark (issue Step 3): dense MiniLM-L6 vs trimmed plans, onnxruntime on this host.

Batch 1, sequence 128 and 32, 1 and 2 threads, fp32 (fused graph) and int8. Plans: uniform and
sensitivity-driven (density + proportional, uneven per-layer shapes) at 70/50/30% of the
trimmable encoder parameters, and the sensitivity plans rounded to FFN widths in multiples of 16.
Speed-up is against dense in the same setting; efficiency = speed-up / FLOPs reduction (the
physical limit is 1.0).

    python bench/latency.py --sensitivity /tmp/sensibert-bench-accuracy/sensitivity-density-s0.json
    python bench/latency.py --docs     # the tables into docs/latency.md (between its table:latency markers)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _artifacts import HOST_PROFILE, build, plans  # noqa: E402
from _results import (DOCS, RESULTS, add_table_flags, md_row, md_table, read_result, tables_mode,  # noqa: E402
                      write_result)

RESULT = RESULTS / "latency.json"
DOC = DOCS / "latency.md"


def run(sensitivity: Path, work: Path, runs: int) -> None:
    from deploy.artifacts import package_versions
    from deploy.measure import BenchConfig, measure
    from deploy.profile import load_profile
    from toolchain import costs

    profile = load_profile(HOST_PROFILE)
    rows = []
    for name, plan in plans(sensitivity).items():
        artifact = build(name, plan, sensitivity, work)
        shape = plan_shape(plan)
        for seq in (128, 32):
            for threads in (1, 2):
                for precision in ("fp32", "int8"):
                    res = measure(artifact, profile, BenchConfig(precision=precision, seq_len=seq, threads=threads,
                                                                 runs=runs, warmup=10, memory=False))
                    rows.append({"plan": name, "heads": list(plan.heads), "ffn": list(plan.ffn),
                                 "keep_trimmable": plan.cost["keep_trimmable_params"],
                                 "flops": costs.total_flops(shape, 1, seq), "seq_len": seq, "threads": threads,
                                 "precision": precision, "p50_ms": res.p50_ms, "p90_ms": res.p90_ms,
                                 "mean_ms": res.mean_ms, "host": res.host, "loadavg": res.host_loadavg})
                    print(f"{name:<26} seq {seq:<3} thr {threads} {precision}: p50 {res.p50_ms:7.2f} ms", flush=True)
    write_result(RESULT, {"runs": runs, "warmup": 10, "batch": 1, "profile": str(HOST_PROFILE.name),
                          "package_versions": package_versions(), "rows": rows}, indent=1)


def plan_shape(plan):
    from toolchain.costs import EncoderShape

    a = plan.architecture
    return EncoderShape(hidden=a["hidden"], head_size=a["head_size"], heads=tuple(plan.heads), ffn=tuple(plan.ffn),
                        vocab_size=30522, max_positions=512, type_vocab_size=2, num_labels=2)


def table() -> str:
    body = read_result(RESULT)
    rows = body["rows"]
    dense = {(r["seq_len"], r["threads"], r["precision"]): r for r in rows if r["plan"] == "dense"}
    dense_fp32 = {(r["seq_len"], r["threads"]): r for r in rows if r["plan"] == "dense" and r["precision"] == "fp32"}
    out = [f"Host: {rows[0]['host']}; onnxruntime {body['package_versions'].get('onnxruntime')}; batch 1; "
           f"{body['runs']} timed runs after {body['warmup']} warm-up; p50 / p90 in ms. Speed-up against dense at the "
           "same precision, length and threads; efficiency = speed-up ÷ FLOPs reduction (1.0 is the physical "
           "limit). int8 ×fp32 = dense fp32 p50 ÷ this p50.", ""]
    for seq in (128, 32):
        for threads in (1, 2):
            out += [f"### seq {seq}, {threads} thread{'s' if threads > 1 else ''}", "",
                    *md_table(["plan", "keep", "GFLOP", "FLOPs cut", "fp32 p50 / p90", "fp32 speed-up",
                               "fp32 efficiency", "int8 p50 / p90", "int8 speed-up", "int8 efficiency",
                               "int8 ×fp32-dense"])]
            for r in rows:
                if r["seq_len"] != seq or r["threads"] != threads or r["precision"] != "fp32":
                    continue
                q = next(x for x in rows if x["plan"] == r["plan"] and x["seq_len"] == seq
                         and x["threads"] == threads and x["precision"] == "int8")
                d32, d8 = dense[(seq, threads, "fp32")], dense[(seq, threads, "int8")]
                cut = d32["flops"] / r["flops"]
                s32, s8 = d32["p50_ms"] / r["p50_ms"], d8["p50_ms"] / q["p50_ms"]
                out.append(md_row([r["plan"], f"{r['keep_trimmable']:.0%}", f"{r['flops'] / 1e9:.3f}", f"{cut:.2f}×",
                                   f"{r['p50_ms']:.2f} / {r['p90_ms']:.2f}", f"{s32:.2f}×", f"{s32 / cut:.2f}",
                                   f"{q['p50_ms']:.2f} / {q['p90_ms']:.2f}", f"{s8:.2f}×", f"{s8 / cut:.2f}",
                                   f"{dense_fp32[(seq, threads)]['p50_ms'] / q['p50_ms']:.2f}×"]))
            out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensitivity", type=Path, default=Path("/tmp/sensibert-bench-accuracy/sensitivity-density-s0.json"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/sensibert-bench-artifacts"))
    parser.add_argument("--runs", type=int, default=100)
    add_table_flags(parser, DOC)
    args = parser.parse_args()
    if tables_mode(args, DOC, lambda: {"table:latency": table()}):
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    run(args.sensitivity, args.work, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
