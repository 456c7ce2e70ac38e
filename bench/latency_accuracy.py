"""Latency-priced plans against FLOPs-priced plans at equal measured latency (issue Step 11):
accuracy of the shipped int8 artifact, and the speed of each against the optimum peer.

SST-2, packaged MiniLM-L6, the Step 6 recipe (``bench/accuracy_modes.py``: teacher-first, the
seed-0 dense teacher, STUDENT schedule, Fisher sensitivity of the dense fine-tuned model), on this
host's profile (``device_profiles/host.yaml`` and its measured table ``host.latency.json``: one
thread, int8 dynamic-per-channel). Per seed (0, 1):

- ``flops-50``: today's default plan at 50% (``proportional`` under the FLOPs/params cap of
  ``--keep 0.5``): the committed Step 6 row ``sensitivity_teacher-k50``;
- ``latency-proportional``: ``--cost-model latency --allocation proportional`` (the same shares,
  priced by the table);
- ``latency-greedy``: ``--allocation latency`` (most kept importance per millisecond, whole blocks
  removable).

Latency plans are priced at 25 tokens (the mean token count of the timed dev inputs) and capped
so that their int8 artifact's *measured* latency equals flops-50's: ``--match`` starts at
flops-50's predicted latency and rescales the cap by measured/target three times, keeping the
iteration whose measurement is nearest the target (timing only: no label, no score). The match
used the host table of the time (one in-graph scale, ``plans-s*.json`` record its shapes);
``--train`` re-makes each plan and checks it against the match, ``--time`` uses the shapes. Latency is
the mean per input over the first 300 SST-2 dev sentences at their own lengths, batch 1, one
thread, every artifact of a seed timed interleaved in one process (``bench/speed.time_all``).
Latency does not depend on trained weights, so matching and timing use artifacts of the
pre-trained encoder trimmed to each plan (``bench/_artifacts.build``); accuracy comes from the
trained rows (``--train``: shrink, export, dev accuracy of the int8 file through deploy/).
``--time`` times every row's artifact, the dense one and the Step 9 optimum peer side by side.

    OMP_NUM_THREADS=1 python bench/latency_accuracy.py --match            # idle machine, minutes
    OMP_NUM_THREADS=1 python bench/latency_accuracy.py --train latency-proportional --seed 0
    OMP_NUM_THREADS=1 python bench/latency_accuracy.py --time             # idle machine, minutes
    python bench/latency_accuracy.py --docs                              # tables into docs/latency.md
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402
from _results import DOCS, ROOT, add_table_flags, md_table, read_result, tables_mode, write_result  # noqa: E402

RESULTS = _results.RESULTS / "latency_accuracy"
DOC = DOCS / "latency.md"
PROFILE = ROOT / "device_profiles" / "host.yaml"
WORK = Path("/tmp/sensibert-bench-latency")
SEEDS = (0, 1)
KEEP = 0.5
PRICE_SEQ = 25      # tokens: the mean length of the timed SST-2 dev inputs
INPUTS = 300
MATCH_STEPS = 3
LATENCY_PLANS = {"latency-proportional": "proportional", "latency-greedy": "latency"}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bench_state():
    import accuracy_modes as modes

    return modes, modes.Bench(modes.Path("/tmp/sensibert-bench-modes"), 1)


def table():
    from deploy.latency_table import profile_tables
    from deploy.profile import load_profile

    return profile_tables(load_profile(PROFILE))["int8"]


def seed_sensitivity(modes, bench, seed: int):
    from toolchain.pipeline import TEACHER_FIRST

    sens = modes.sensitivity(bench, TEACHER_FIRST["method"], seed, on_teacher=True)
    path = bench.work / f"sensitivity-{TEACHER_FIRST['method']}-teacher-s{seed}.json"
    return sens, path


def flops_plan(sens):
    """Today's default plan at 50%, as the committed Step 6 row made it."""
    from toolchain.budget import budget_from_keep
    from toolchain.plan import PlanConfig, allocate
    from toolchain.pipeline import TEACHER_FIRST

    return allocate(sens, sens.shape, budget_from_keep(sens.shape, KEEP),
                    PlanConfig(allocation=TEACHER_FIRST["allocation"]))


def latency_plan(sens, allocation: str, cap_ms: float):
    from toolchain.budget import LatencyBudget, budget_from_keep
    from toolchain.plan import PlanConfig, allocate

    return allocate(sens, sens.shape, budget_from_keep(sens.shape, 1.0, seq_len=PRICE_SEQ),
                    PlanConfig(allocation=allocation, cost_model="latency"),
                    latency=LatencyBudget(table(), cap_ms, PRICE_SEQ))


def dev_inputs() -> list[str]:
    import speed

    return speed.dev_split()[0][:INPUTS]


def time_real(arts: dict[str, Path], peer: Path | None = None) -> dict[str, dict]:
    """Time the int8 model of every artifact (and the peer's file) interleaved in one process."""
    import speed

    from deploy.manifest import read_manifest
    from deploy.predict import load_tokenizer

    named = {n: {"file": str(a / read_manifest(a, verify=False).models["int8"])} for n, a in arts.items()}
    if peer is not None:
        named["peer/optimum-int8"] = {"file": str(peer)}
    tokenizer = load_tokenizer(read_manifest(next(iter(arts.values())), verify=False))
    return speed.time_all(named, tokenizer, dev_inputs(), threads=1)


def match(seeds) -> None:
    """Find, per seed, each latency row's cap whose plan measures what flops-50 measures; rows
    already matched are kept."""
    import _artifacts
    from deploy.latency_table import predict

    modes, bench = bench_state()
    tab = table()
    for seed in seeds:
        out = RESULTS / f"plans-s{seed}.json"
        body = read_result(out) if out.exists() else {"seed": seed, "tries": {}, "chosen": {}}
        todo = [name for name in LATENCY_PLANS if name not in body["chosen"]]
        if not todo:
            continue
        sens, sens_path = seed_sensitivity(modes, bench, seed)
        work = WORK / f"s{seed}"
        fplan = flops_plan(sens)
        committed = read_result(_results.RESULTS / "accuracy_modes" / f"sensitivity_teacher-k50-s{seed}.json")
        assert [list(fplan.heads), list(fplan.ffn)] == [committed["heads"], committed["ffn"]], "not the committed row"
        flops_art = _artifacts.build("flops-50", fplan, sens_path, work)
        caps = {name: predict(tab, fplan.heads, fplan.ffn, PRICE_SEQ) for name in todo}
        tries: dict[str, list[dict]] = {name: [] for name in todo}
        for step in range(MATCH_STEPS):
            plans = {name: latency_plan(sens, LATENCY_PLANS[name], caps[name]) for name in todo}
            arts = {"flops-50": flops_art} | {name: _artifacts.build(f"{name}-{step}", p, sens_path, work)
                                              for name, p in plans.items()}
            ms = time_real(arts)
            for name, p in plans.items():
                target = ms["flops-50"]["real_mean_ms"]
                got = ms[name]["real_mean_ms"]
                tries[name].append({"cap_ms": caps[name], "heads": list(p.heads), "ffn": list(p.ffn),
                                    "predicted_ms": p.cost["predicted_latency_ms"], "measured_ms": got,
                                    "flops_50_measured_ms": target, "ratio": got / target})
                _log(f"seed {seed} {name} step {step}: cap {caps[name]:.3f} ms, measured {got:.3f} vs {target:.3f}")
                caps[name] *= target / got
        body["tries"].update(tries)
        body["chosen"].update({name: min(t, key=lambda r: abs(r["ratio"] - 1.0)) for name, t in tries.items()})
        body.update({"price_seq": PRICE_SEQ, "inputs": INPUTS, "flops_50": {
            "heads": list(fplan.heads), "ffn": list(fplan.ffn)}, "when": time.strftime("%Y-%m-%d")})
        write_result(out, body)


def train(name: str, seed: int) -> None:
    """Fine-tune the matched latency plan with the Step 6 recipe and score its int8 artifact."""
    out = RESULTS / f"{name}-s{seed}.json"
    if out.exists():
        return
    modes, bench = bench_state()
    sens, _ = seed_sensitivity(modes, bench, seed)
    chosen = read_result(RESULTS / f"plans-s{seed}.json")["chosen"][name]
    plan = latency_plan(sens, LATENCY_PLANS[name], chosen["cap_ms"])
    assert [list(plan.heads), list(plan.ffn)] == [chosen["heads"], chosen["ffn"]]
    data = bench.data(modes.STUDENT["train_samples"], seed)
    _log(f"{name} seed {seed}: start")
    res = modes.teacher_first_row(bench, plan, sens, seed, data, WORK / f"s{seed}" / f"{name}-trained")
    res.pop("plan")
    res.update(modes.deliver(bench, res.pop("masked_dir"), res.pop("folder")))
    write_result(out, {"row": name, "seed": seed, "heads": list(plan.heads), "ffn": list(plan.ffn),
                       "cap_ms": chosen["cap_ms"], "price_seq": PRICE_SEQ, **res})
    _log(f"{name} seed {seed}: dev {res['dev_accuracy']:.4f} int8 {res['onnx_int8_accuracy']:.4f}")


def time_rows() -> None:
    """Time every row's artifact, the dense one and the optimum peer side by side."""
    import _artifacts
    import speed

    from toolchain.plan import dense_plan

    modes, bench = bench_state()
    arts = {}
    for seed in SEEDS:
        plans = read_result(RESULTS / f"plans-s{seed}.json")
        sens, sens_path = seed_sensitivity(modes, bench, seed)
        work = WORK / f"s{seed}"
        arts[f"flops-50/s{seed}"] = _artifacts.build("flops-50", flops_plan(sens), sens_path, work)
        for name in LATENCY_PLANS:  # the shapes that were matched and trained (a re-measured table may differ)
            chosen = plans["chosen"][name]
            shape = dataclasses.replace(dense_plan(sens.shape), heads=tuple(chosen["heads"]), ffn=tuple(chosen["ffn"]))
            arts[f"{name}/s{seed}"] = _artifacts.build(f"{name}-chosen", shape, sens_path, work)
        if seed == 0:
            arts["dense"] = _artifacts.build("dense", dense_plan(sens.shape), sens_path, work)
    peer = speed.build_peer(WORK / "peer")
    write_result(RESULTS / "timing.json", {"inputs": INPUTS, "threads": 1, "rows": time_real(arts, peer),
                                           "when": time.strftime("%Y-%m-%d")})


def blocks() -> dict[str, str]:
    timing = read_result(RESULTS / "timing.json")["rows"] if (RESULTS / "timing.json").exists() else {}
    peer = timing.get("peer/optimum-int8", {}).get("real_mean_ms")
    rows = []
    for name in ("flops-50", *LATENCY_PLANS):  # the rows, in the order the docstring names them
        accs, int8s, mss, shapes = [], [], [], []
        for seed in SEEDS:
            path = (_results.RESULTS / "accuracy_modes" / f"sensitivity_teacher-k50-s{seed}.json"
                    if name == "flops-50" else RESULTS / f"{name}-s{seed}.json")
            if not path.exists():
                continue
            r = read_result(path)
            accs.append(r["dev_accuracy"])
            int8s.append(r["onnx_int8_accuracy"])
            shapes.append(f"s{seed}: heads {' '.join(map(str, r['heads']))}; FFN {' '.join(map(str, r['ffn']))}")
            if f"{name}/s{seed}" in timing:
                mss.append(timing[f"{name}/s{seed}"]["real_mean_ms"])
        if not accs:
            continue
        spread = f" ± {statistics.stdev(int8s) * 100:.2f}" if len(int8s) > 1 else ""
        ms = statistics.fmean(mss) if mss else None
        rows.append([name, len(accs), f"{statistics.fmean(accs) * 100:.2f}",
                     f"{statistics.fmean(int8s) * 100:.2f}{spread}", f"{ms:.3f}" if ms else "–",
                     f"{peer / ms:.2f}×" if ms and peer else "–", "<br>".join(shapes)])
    dense = timing.get("dense", {}).get("real_mean_ms")
    lines = md_table(["plan (50% class)", "seeds", "PyTorch dev %", "int8 artifact dev % (± sd)",
                      "int8 ms/input (real)", "speed-up vs peer int8", "shapes"], rows)
    note = (f"\nDense int8 artifact {dense:.3f} ms, optimum peer (dense, ORTQuantizer) {peer:.3f} ms per input; "
            if dense and peer else "\n")
    note += (f"{INPUTS} SST-2 dev sentences at their own lengths, one thread, interleaved in one run. "
             "Latency plans priced at 25 tokens, caps matched to flops-50's measured latency (`--match`). "
             "Accuracy: full SST-2 dev (872), the Step 6 recipe; flops-50 rows are the committed Step 6 rows.")
    return {"table:latency_accuracy": "\n".join(lines) + "\n" + note + "\n"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--match", action="store_true", help="find the matched latency caps (timing)")
    parser.add_argument("--train", choices=list(LATENCY_PLANS), default=None, help="fine-tune one latency row")
    parser.add_argument("--seed", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--time", action="store_true", help="time every row side by side with the peer")
    add_table_flags(parser, DOC)
    args = parser.parse_args()
    if tables_mode(args, DOC, blocks):
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.match:
        match(args.seed)
    if args.train:
        for seed in args.seed:
            train(args.train, seed)
    if args.time:
        time_rows()
    return 0


if __name__ == "__main__":
    sys.exit(main())
