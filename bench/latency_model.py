"""Latency benchmark (issue Step 11): the measured latency table's predictions against the
artifacts' measured latency, and latency plans against FLOPs plans at equal predicted latency.

On this host's profile (``device_profiles/host.yaml``: one thread, int8 dynamic-per-channel),
the packaged MiniLM-L6. Latency does not depend on trained weights, so every artifact is the
pre-trained encoder trimmed by its plan (``bench/_artifacts.build``: units chosen by a Fisher
sensitivity on 512 SST-2 training sentences, seed 0) and exported through ``sensibert export``.
Rows: the dense model; FLOPs plans (``proportional`` allocation, the FLOPs cap at 70 / 50 / 30%
of the dense encoder's FLOPs at 128 tokens); latency plans (``--allocation latency``, and
``--cost-model latency`` with ``proportional``) capped at the latency the table predicts for
each FLOPs plan at 128 tokens. With ``--calibrate`` (how the committed result was made) the
host's table is measured first in the same run, so that table and rows see the same machine
state; its fixed cost and in-graph scales (one for attention, one for FFN sub-layers, per
length) are fitted on four artifacts: the dense model, uniform trimming to 30%, and 30% of only
the heads / only the FFN neurons (the dense row is therefore close to its calibration by
construction, every other row is a prediction). Every artifact's int8 model is timed
interleaved in one process (``bench/speed.time_all``: each round runs every session once, in a
seeded shuffled order): at 128 tokens (median of 100 rounds) and over the first 300 SST-2 dev
sentences at their own lengths (mean per input), one thread; the prediction at real lengths is
the mean of the table's prediction at each sentence's token count.

Accuracy at equal measured latency (fine-tuned rows): ``bench/latency_accuracy.py``.

    OMP_NUM_THREADS=1 python bench/latency_model.py --calibrate   # re-measures device_profiles/host.latency.json first
    python bench/latency_model.py --docs                    # the table into docs/latency.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402
from _results import DOCS, ROOT, add_table_flags, md_table, read_result, tables_mode, write_result  # noqa: E402

RESULT = _results.RESULTS / "latency_model.json"
DOC = DOCS / "latency.md"
PROFILE = ROOT / "device_profiles" / "host.yaml"
TABLE = ROOT / "device_profiles" / "host.latency.json"
SEQ_LENS = (8, 16, 32, 64, 128)
KEEPS = (0.7, 0.5, 0.3)
DEV_INPUTS = 300
SEQ = 128


def sensitivity(work: Path) -> Path:
    """Return a Fisher sensitivity of the packaged MiniLM on SST-2 training sentences (for choosing units)."""
    path = work / "sensitivity.json"
    if path.is_file():
        return path
    from toolchain.models import default_model_dir, load_task_model, load_tokenizer
    from toolchain.sensitivity import SensitivityConfig, analyse
    from toolchain.tasks import get_task, load_task_data

    model_dir = default_model_dir()
    data = load_task_data("sst2", load_tokenizer(model_dir), max_length=64, max_train_samples=512, seed=0)
    model = load_task_model(model_dir, get_task("sst2"), seed=0)
    analyse(model, data.train, data.collator, SensitivityConfig(method="fisher", steps=32, seed=0),
            task="sst2").save(path)
    return path


def plans(sens_path: Path, table) -> dict:
    """Return the named plans: dense, FLOPs plans at each keep, latency plans at their predicted latency."""
    from deploy.latency_table import predict
    from toolchain import costs
    from toolchain.budget import LatencyBudget, budget_from_flops, budget_from_keep
    from toolchain.plan import PlanConfig, allocate
    from toolchain.sensitivity import Sensitivity

    sens = Sensitivity.load(sens_path)
    shape = sens.shape
    out = {"dense": allocate(sens, shape, budget_from_keep(shape, 1.0), PlanConfig(allocation="uniform"))}
    if table is None:  # the calibration artifacts: dense, uniform 30%, and 30% of only the heads / only the FFN
        import dataclasses

        uniform = allocate(sens, shape, budget_from_keep(shape, 0.3, seq_len=SEQ), PlanConfig(allocation="uniform"))
        out["uniform-30"] = uniform
        out["heads-30"] = dataclasses.replace(out["dense"], heads=uniform.heads)
        out["ffn-30"] = dataclasses.replace(out["dense"], ffn=uniform.ffn)
        return out
    dense_flops = costs.encoder_flops(shape, 1, SEQ)
    for keep in KEEPS:
        pct = int(round(keep * 100))
        flops_plan = allocate(sens, shape, budget_from_flops(shape, int(keep * dense_flops), SEQ),
                              PlanConfig(allocation="proportional"))
        out[f"flops-{pct}"] = flops_plan
        cap = predict(table, flops_plan.heads, flops_plan.ffn, SEQ)
        for name, allocation in (("latency", "latency"), ("latency-prop", "proportional")):
            out[f"{name}-{pct}"] = allocate(sens, shape, budget_from_keep(shape, 1.0, seq_len=SEQ),
                                            PlanConfig(allocation=allocation, cost_model="latency"),
                                            latency=LatencyBudget(table, cap, SEQ))
    return out


def run(work: Path, recalibrate: bool) -> dict:
    import _artifacts
    import speed
    from deploy.latency_table import calibrate_table, predict, profile_tables
    from deploy.predict import load_tokenizer as deploy_tokenizer
    from deploy.manifest import read_manifest
    from deploy.profile import load_profile
    from deploy.session import session_settings
    from toolchain import costs
    from toolchain.models import load_tokenizer
    from toolchain.sensitivity import Sensitivity
    from toolchain.tasks import load_task_data

    profile = load_profile(PROFILE)
    sens_path = sensitivity(work)
    base = plans(sens_path, None)
    calibration_arts = [str(_artifacts.build(name, plan, sens_path, work)) for name, plan in base.items()]
    if not recalibrate and not profile_tables(profile):
        raise SystemExit("error: device_profiles/host.yaml has no latency table; run with --calibrate")
    if recalibrate:  # the table in the same run as the rows it predicts: no drift between them
        calibrate_table(profile, TABLE, artifact=calibration_arts, seq_lens=SEQ_LENS, progress=False)
    table = profile_tables(profile)["int8"]
    named = plans(sens_path, table)
    sens_shape = Sensitivity.load(sens_path).shape
    arts = {name: _artifacts.build(name, plan, sens_path, work) for name, plan in named.items()}
    data = load_task_data("sst2", load_tokenizer(arts["dense"]), max_length=128, max_train_samples=8)
    items = data.eval_items()[0][:DEV_INPUTS]
    settings = session_settings(profile.runtime)
    lengths = [len(deploy_tokenizer(read_manifest(arts["dense"], verify=False)).encode(t).ids) for t in items]
    timed = speed.time_all({n: {"file": str(a / read_manifest(a, verify=False).models["int8"])} for n, a in arts.items()},
                           deploy_tokenizer(read_manifest(arts["dense"], verify=False)), items, threads=1)
    rows = []
    for name, art in arts.items():  # all timed interleaved in one process
        plan = named[name]
        rows.append({"name": name, "heads": list(plan.heads), "ffn": list(plan.ffn),
                     "encoder_flops": costs.encoder_flops(sens_shape.with_units(plan.heads, plan.ffn), 1, SEQ),
                     "predicted_128_ms": predict(table, plan.heads, plan.ffn, SEQ),
                     "measured_128_ms": timed[name]["fixed_p50_ms"],
                     "predicted_real_ms": statistics.fmean(predict(table, plan.heads, plan.ffn, n) for n in lengths),
                     "measured_real_ms": timed[name]["real_mean_ms"], "tokens_mean": statistics.fmean(lengths)})
    return {"profile": str(PROFILE.relative_to(ROOT)), "table": {"host": table.host, "runtime": table.runtime,
                                                                  "fixed_from": table.fixed_from},
            "inputs": len(items), "threads": settings.intra_op_threads, "rows": rows,
            "when": time.strftime("%Y-%m-%d"), "calibrated_in_run": recalibrate}


def blocks() -> dict[str, str]:
    body = read_result(RESULT)
    rows = []
    errors = {"128": [], "real": []}
    for r in body["rows"]:
        cells = [r["name"], " ".join(map(str, r["heads"])), " ".join(map(str, r["ffn"])), f"{r['encoder_flops'] / 1e9:.2f}"]
        for key in ("128", "real"):
            pred, meas = r[f"predicted_{key}_ms"], r[f"measured_{key}_ms"]
            err = (pred - meas) / meas
            errors[key].append(abs(err))
            cells += [f"{pred:.3f}", f"{meas:.3f}", f"{100 * err:+.1f}%"]
        rows.append(cells)
    lines = md_table(["row", "heads", "FFN", "GFLOP @128", "pred. 128 ms", "meas. 128 ms", "error",
                      "pred. real ms", "meas. real ms", "error"], rows)
    mae = {k: 100 * statistics.fmean(v) for k, v in errors.items()}
    worst = {k: 100 * max(v) for k, v in errors.items()}
    lines += ["", f"Mean absolute error: {mae['128']:.1f}% at 128 tokens, {mae['real']:.1f}% at real lengths "
                  f"(worst rows {worst['128']:.1f}% and {worst['real']:.1f}%); {body['inputs']} SST-2 dev inputs, "
                  f"{body['threads']} thread, int8 dynamic-per-channel, {body['when']}. Table: {body['table']['host']}, "
                  f"onnxruntime {body['table']['runtime'].get('onnxruntime')}."]
    return {"table:latency_model": "\n".join(lines) + "\n"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sensibert-bench-latency-model"))
    parser.add_argument("--calibrate", action="store_true",
                        help="first re-measure device_profiles/host.latency.json (fixed cost on the dense row's artifact)")
    add_table_flags(parser, DOC)
    args = parser.parse_args()
    if tables_mode(args, DOC, blocks):
        return 0
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: run with OMP_NUM_THREADS=1 (the profile times one thread)", file=sys.stderr)
    args.work.mkdir(parents=True, exist_ok=True)
    write_result(RESULT, run(args.work, args.calibrate))
    sys.stdout.write(blocks()["table:latency_model"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
