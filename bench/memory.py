"""Memory benchmark (issue Step 4): the toolchain's predicted peak memory against measured peak RSS.

For the dense MiniLM-L6 and sensitivity-driven plans at 50% and 30%, fp32 and int8, sequence
lengths 32, 128 and 512: predicted = runtime overhead + resident factor × weight bytes + peak
activations (toolchain/costs.py, with the profile's factors); measured = peak resident memory
(VmHWM) of a fresh process that imports onnxruntime, creates the session under the profile's
runtime settings and runs it (deploy's memory probe). Goal: within 15%.

    python bench/memory.py --profile rpi4-4gb
    python bench/memory.py --table
    python bench/memory.py --docs      # the table into docs/memory.md (table:memory)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _artifacts import build, plans  # noqa: E402
from _results import DOCS, RESULTS, add_table_flags, md_table, read_result, tables_mode, write_result  # noqa: E402

RESULT = RESULTS / "memory.json"
DOC = DOCS / "memory.md"
PLANS = ("dense", "sensitivity-50", "sensitivity-30")


def run(sensitivity: Path, work: Path, profile_name: str) -> None:
    from deploy.artifacts import package_versions
    from deploy.manifest import read_manifest
    from deploy.measure import bench_inputs, probe_memory
    from deploy.predict import load_tokenizer
    from deploy.profile import load_profile
    from deploy.session import open_session, session_settings
    from deploy.predict import session_feed
    from toolchain import costs
    from latency import plan_shape

    profile = load_profile(profile_name)
    settings = session_settings(profile.runtime, 1)
    rows = []
    all_plans = plans(sensitivity)
    for name in PLANS:
        plan = all_plans[name]
        artifact = build(name, plan, sensitivity, work)
        manifest = read_manifest(artifact)
        shape = plan_shape(plan)
        tokenizer = load_tokenizer(manifest)
        for precision in ("fp32", "int8"):
            model_path = manifest.model_path(precision)
            session = open_session(model_path, settings=settings)
            for seq in (32, 128, 512):
                feed = session_feed(session, bench_inputs(tokenizer, manifest.task_kind, 1, seq), str(model_path))
                measured = probe_memory(model_path, settings, feed, warmup=3)
                est = costs.memory_estimate(shape, precision, 1, seq,
                                            getattr(profile.budget.resident_factor, precision),
                                            profile.budget.runtime_overhead_bytes,
                                            profile.budget.load_transient_bytes or 0)
                peak = measured["peak_rss_bytes"]
                rows.append({"plan": name, "precision": precision, "seq_len": seq,
                             "predicted_bytes": est.total_bytes, "measured_peak_bytes": peak,
                             "error": est.total_bytes / peak - 1, "weight_bytes": est.weight_bytes,
                             "predicted_activation_bytes": est.activation_bytes,
                             "file_bytes": model_path.stat().st_size, "readings": measured})
                print(f"{name:<16} {precision} seq {seq:<3}: predicted {est.total_bytes / 2**20:7.1f} MiB, "
                      f"measured {peak / 2**20:7.1f} MiB ({est.total_bytes / peak - 1:+.1%})", flush=True)
            del session
    write_result(RESULT, {"profile": profile.id, "session_config": dict(profile.runtime.session_config),
                          "resident_factor": {"fp32": profile.budget.resident_factor.fp32,
                                              "int8": profile.budget.resident_factor.int8},
                          "runtime_overhead_bytes": profile.budget.runtime_overhead_bytes,
                          "load_transient_bytes": profile.budget.load_transient_bytes or 0,
                          "package_versions": package_versions(), "rows": rows}, indent=1)


def table() -> str:
    body = read_result(RESULT)
    mib = 2**20
    out = [f"Profile `{body['profile']}` runtime settings ({', '.join(f'{k}={v}' for k, v in body['session_config'].items())}; "
           f"1 thread), resident factor fp32 {body['resident_factor']['fp32']} / int8 {body['resident_factor']['int8']}, "
           f"overhead {body['runtime_overhead_bytes'] / mib:.1f} MiB, session-creation transient "
           f"{body.get('load_transient_bytes', 0) / mib:.1f} MiB. Predicted = overhead + max(weights + transient, "
           "resident factor × weights + activations). Measured = VmHWM of a fresh process.", "",
           *md_table(["plan", "precision", "seq", "weights MiB", "predicted MiB", "measured peak MiB", "error",
                      "within 15%"],
                     [[r["plan"], r["precision"], r["seq_len"], f"{r['weight_bytes'] / mib:.1f}",
                       f"{r['predicted_bytes'] / mib:.1f}", f"{r['measured_peak_bytes'] / mib:.1f}",
                       f"{r['error']:+.1%}", "yes" if abs(r["error"]) <= 0.15 else "NO"] for r in body["rows"]])]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensitivity", type=Path, default=Path("/tmp/sensibert-bench-accuracy/sensitivity-density-s0.json"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/sensibert-bench-artifacts"))
    parser.add_argument("--profile", default="rpi4-4gb")
    add_table_flags(parser, DOC)
    args = parser.parse_args()
    if tables_mode(args, DOC, lambda: {"table:memory": table()}):
        return 0
    run(args.sensitivity, args.work, args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
