"""The run report: ``report.json`` (numbers) and ``report.md`` (the same numbers for people), plus plots.

Numbers are kept as numbers in JSON; formatting happens only in the Markdown renderer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.artifacts import atomic_path, package_versions, write_json
from deploy.int8 import INT8_VARIANTS
from toolchain import costs
from toolchain.tasks import get_task

MIB = 2**20


def _model_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors")) or sum(
        p.stat().st_size for p in path.glob("*.bin"))


def _shape_costs(shape: Any, seq: int) -> dict[str, Any]:
    return {"heads": list(shape.heads), "ffn": list(shape.ffn), "total_params": costs.total_params(shape),
            "encoder_params": costs.encoder_params(shape), "trimmable_params": costs.trimmable_params(shape),
            "flops": costs.total_flops(shape, 1, seq)}


def _data(ctx: Any, delivered: Any) -> dict[str, Any]:
    """Return the data record: from the data this process loaded, else the one a delivered model's
    evaluation recorded when it ran (a resumed run or sweep keeps its split sizes without
    tokenising again)."""
    if ctx.data is None and delivered is not None and delivered.data:
        return delivered.data
    return data_record(ctx.config, ctx.data)


def build_report(ctx: Any, device: Any, sens: Any, dense: Any, attempts: list[Any], st: Any,
                 wall: float) -> dict[str, Any]:
    """Return the report body: before/after, plan, accuracies, latency and memory, timings, versions."""
    final = attempts[-1]
    seq = device.seq_len
    kept = ctx.shape.with_units(final.plan["heads"], final.plan["ffn"])
    artifact = ctx.out / final.folder / "artifact"
    check = final.check
    return {
        "model": str(ctx.model_dir), "model_hash": ctx.model_hash, "task": ctx.config.task,
        "profile": ctx.profile.id, "precision": final.delivered.shipped, "precision_asked": ctx.precision,
        "int8_refused": final.delivered.int8_refused, "settings": ctx.config.settings(),
        "mode": mode_record(ctx), "data": _data(ctx, final.delivered),
        "target_met": final.met,
        "before": {**_shape_costs(ctx.shape, seq), "size_bytes": _model_size(ctx.model_dir)},
        "after": {**_shape_costs(kept, seq),
                  "size_bytes": {p: final.delivered.export["sizes"][f] for p, f in final.delivered.export["models"].items()}},
        "device_budget": device.to_dict(),
        "binding": final.plan["binding"],
        "latency_model": final.plan["cost"].get("latency_model") or {"cost_model": "flops"},
        "predicted_latency_ms": final.plan["cost"].get("predicted_latency_ms"),
        "sensitivity": {"method": sens.method, "scores": dict(sens.scores), "wall_time_s": sens.wall_time_s},
        "accuracy": {
            "dense_pytorch": dense.finetune["dev_accuracy"] if dense else None,
            "dense_onnx": dense.delivered.onnx_accuracy if dense else None,
            "trimmed_pytorch": final.finetune["dev_accuracy"],
            "trimmed_onnx": final.delivered.onnx_accuracy,
            "dense_onnx_scores": dense.delivered.onnx_scores if dense else None,
            "trimmed_onnx_scores": final.delivered.onnx_scores,
        },
        "metric": get_task(ctx.config.task).metric,
        "latency_memory": {
            "trimmed": {p: _bench_row(b) for p, b in final.delivered.bench.items()},
            "dense": {p: _bench_row(b) for p, b in dense.delivered.bench.items()} if dense else None,
        },
        "check": check,
        "int8": final.delivered.export.get("int8"),
        "export_notes": final.delivered.export.get("notes", []),  # what the export could not do as asked
        "selection": (f"best epoch on a validation split carved from the training data (fraction "
                      f"{ctx.config.validation_fraction}); the dev split only reports"
                      if ctx.config.validation_fraction else "the last checkpoint (no score chose it)"),
        "qat": bool(ctx.config.qat),
        "vocab": (st.stages.get(f"{final.folder}/vocab") or {}).get("result"),
        "attempts": [{"attempt": a.attempt, "heads": a.plan["heads"], "ffn": a.plan["ffn"],
                      "budget": a.budget, "binding": a.plan["binding"],
                      "trimmable_params": a.plan["cost"]["trimmable_params"],
                      "accuracy_pytorch": a.finetune["dev_accuracy"], "accuracy_onnx": a.delivered.onnx_accuracy,
                      "check": a.check} for a in attempts],
        "artifact": str(artifact),
        "stage_timings_s": dict(st.timings), "stages_skipped": list(st.skipped), "stages_run": list(st.ran),
        "wall_time_s": round(wall, 2),
        "package_versions": package_versions(),
    }


METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1", "exact_match": "exact match"}


def metric_name(key: str) -> str:
    """Return a score's name in reports: ``accuracy_<split>`` is the accuracy on a task's further
    dev split (``accuracy_mismatched``: MNLI mismatched)."""
    if key.startswith("accuracy_"):
        return f"accuracy on dev {key[len('accuracy_'):]}"
    return METRIC_NAMES.get(key, key)


def data_record(config: Any, data: Any = None) -> dict[str, Any]:
    """Return where train and eval rows came from (carved splits labelled as such), with the
    split sizes when this process loaded the data."""
    if config.holdout_by is None:
        record = {"carved": False, "train_from": "train", "eval_from": "dev"}
    else:
        record = {"carved": True, "train_from": config.train_from, "eval_from": config.train_from,
                  "holdout_by": config.holdout_by, "eval_fraction": config.eval_fraction, "seed": config.seed}
    if data is not None and data.qa is not None:  # questions, and the windows (features) they make
        stats = data.qa.train_stats or {}
        record |= {"source": data.source, "train_rows": stats.get("examples"), "eval_rows": len(data.qa.examples),
                   "train_features": stats.get("features"), "eval_features": len(data.eval),
                   "skipped_questions": len(data.qa.skipped)}
    elif data is not None:
        record |= {"source": data.source, "train_rows": len(data.train) if data.train is not None else None,
                   "eval_rows": len(data.eval)}
        if data.extra_eval:  # further dev splits scored on the artifacts (MNLI mismatched)
            record["extra_eval_rows"] = {name: len(rows) for name, rows in data.extra_eval.items()}
    return record


def describe_data(record: dict[str, Any]) -> str:
    """Return the one-line data statement of reports and tables."""
    extra = "".join(f"; also scored on its dev {name} split ({n} rows, never trained on)"
                    for name, n in (record.get("extra_eval_rows") or {}).items())
    if not record.get("carved"):
        return "the task's train split; scored on its dev split" + extra
    return (f"**carved** — train and eval both from the {record['train_from']} file, disjoint by "
            f"{record['holdout_by']} ({record['eval_fraction']:.0%} of its values held out, seed {record['seed']}); "
            "not comparable to results on the official splits" + extra)


def mode_record(ctx: Any) -> dict[str, Any]:
    """Return how the artifact was made: mode, sensitivity source, allocation, start weights, teacher."""
    c = ctx.config
    mode = c.mode
    teacher = None if mode != "teacher-first" else (str(ctx.teacher_dir) if ctx.teacher_dir else "dense")
    return {"mode": mode, **c.defaults(),
            "sensitivity_of": "pre-trained encoder, fresh head" if mode == "no-teacher" else "dense fine-tuned model",
            "start_from": "pre-trained encoder" if mode == "no-teacher" else "dense fine-tuned model",
            "teacher": teacher, "distill_hidden": c.distill_hidden if teacher else None,
            "input": "fine-tuned classifier" if ctx.finetuned_input else "pre-trained encoder"}


def describe_cost_model(r: dict[str, Any]) -> str:
    """Return which cost model the plan was made against, and its prediction when it makes one."""
    m = r.get("latency_model") or {"cost_model": "flops"}
    if m["cost_model"] != "latency table":
        return "the FLOPs model (the budget is FLOPs; latency is not predicted per kernel)"
    return (f"the measured latency table {m['tag']} of {m['host']} ({m['precision']}, onnxruntime "
            f"{m['runtime'].get('onnxruntime')}): {r['predicted_latency_ms']:.3f} ms predicted at {m['seq_len']} tokens "
            f"under a {m['max_ms']:g} ms cap")


def describe_mode(m: dict[str, Any]) -> str:
    """Return one sentence saying which mode produced the artifact."""
    if m["mode"] == "retrain-free":
        return (f"retraining-free (no gradient step on the weights): {m['method']} sensitivity of the fine-tuned "
                f"model, {m['allocation']} mask search, mask rearrangement, least-squares scales")
    head = {"teacher-first": "teacher-first", "no-teacher": "no teacher (the paper's mode)"}[m["mode"]]
    teacher = "" if not m["teacher"] else (
        f", distilled from {'the dense model' if m['teacher'] == 'dense' else m['teacher']} "
        f"(logits + hidden states ×{m['distill_hidden']:g})")
    return (f"{head}: {m['method']} sensitivity of the {m['sensitivity_of']}, {m['allocation']} allocation, "
            f"fine-tuned from the {m['start_from']}{teacher}")


def _bench_row(b: dict[str, Any]) -> dict[str, Any]:
    return {"host_p50_ms": b["p50_ms"], "host_p90_ms": b["p90_ms"], "peak_rss_bytes": b["peak_rss_bytes"],
            "load_ms": b["load_ms"], "threads": b["intra_op_threads"], "seq_len": b["seq_len"],
            "device_estimate_ms": b["estimate"]["latency_ms"], "estimate_tag": b["estimate"]["tag"],
            "estimate_method": b["estimate"]["method"]}


def write_report(report: dict[str, Any], out: Path, sens: Any) -> None:
    """Write report.json, report.md and the plots into ``out``."""
    plots = write_plots(report, out, sens)
    report["plots"] = [str(p.relative_to(out)) for p in plots]
    write_json(out / "report.json", "sensibert.report", 1, report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_markdown(report))


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def int8_not_shipped(refused: list[dict[str, str]]) -> str:
    """Return the line that says why a run shipped fp32 instead of int8, and what to try."""
    return (f"int8 was NOT shipped: every int8 variant failed its gate ({', '.join(r['variant'] for r in refused)}; "
            f"first: {refused[0]['why'][:300]}); shipped the fp32 artifact. Try: more training (--epochs, "
            "--max-train-samples) so the logits are not near-ties, a larger budget, or --precision fp32")


LATENCY_BASIS = {  # how the device latency of a check was obtained (deploy.measure.DeviceEstimate.method), in words
    "measured": "MEASURED on this host, the profile's device",
    "latency_table": "predicted from the latency table measured on the device",
    "calibration": "derived from a probe timed on the device",
}


def verdict(r: dict[str, Any]) -> str:
    """Return the one-line device verdict; an uncalibrated latency says so in the verdict itself."""
    c = r["check"]
    how = LATENCY_BASIS.get(c.get("latency_method"), LATENCY_BASIS["calibration"] if c.get("latency_tag") == "[D]"
                            else "an ESTIMATE from the profile's FLOPs rate, not measured or calibrated on the "
                                 "device, so it cannot fail: run sensibert-deploy calibrate there")
    met = "met" if r["target_met"] else "NOT met"
    measure = f" at {c['latency_measure']}" if c.get("latency_measure") else ""
    return (f"target {met} on {r['profile']}: latency{measure} {c['latency_estimate_ms']:.1f} ms vs "
            f"{c['latency_target_ms']:g} ms ({how}); peak memory {c['peak_rss_bytes'] / MIB:.0f} MiB vs {c['memory_limit_bytes'] / MIB:.0f} MiB "
            "(measured on this host)")


def headline(r: dict[str, Any]) -> str:
    """Return the headline score: the shipped file's, with the fp32 file's and PyTorch's beside it
    (what the user deploys is the shipped file, so its number comes first)."""
    acc, shipped = r["accuracy"], r["precision"]
    variant = (r.get("int8") or {}).get("variant") if shipped == "int8" else None
    others = [f"ONNX {p} {_pct(v)}" for p, v in acc["trimmed_onnx"].items() if p != shipped]
    return (f"dev {metric_name(r.get('metric', 'accuracy'))} of the shipped file (ONNX {shipped}"
            f"{f', {variant}' if variant else ''}): {_pct(acc['trimmed_onnx'].get(shipped))} ("
            + ", ".join(others + [f"PyTorch {_pct(acc['trimmed_pytorch'])}"]) + ")")


def render_markdown(r: dict[str, Any]) -> str:
    """Return the report as Markdown."""
    b, a = r["before"], r["after"]
    acc = r["accuracy"]
    lines = [
        f"# sensibert run: {r['task']} on {r['profile']} ({r['precision']})", "",
        f"Target met: **{'yes' if r['target_met'] else 'NO'}** — {verdict(r)}; binding constraint: "
        f"{r['binding']}; artifact: `{r['artifact']}`", "",
        f"Headline: **{headline(r)}**.", "",
        f"Made by: {describe_mode(r['mode'])}.", "",
        f"Plan priced by: {describe_cost_model(r)}.", "",
        *([f"**{int8_not_shipped(r['int8_refused'])}**", ""] if r.get("int8_refused") and r["precision"] == "fp32"
          else []),
        f"Data: {describe_data(r['data'])}.", "",
        "## Model", "",
        "| | parameters | encoder params | GFLOP @ seq " + str(r["device_budget"]["seq_len"]) + " | size on disk |",
        "|---|---|---|---|---|",
        f"| before | {b['total_params'] / 1e6:.2f}M | {b['encoder_params'] / 1e6:.2f}M | {b['flops'] / 1e9:.3f} | "
        f"{b['size_bytes'] / MIB:.1f} MiB |",
        f"| after | {a['total_params'] / 1e6:.2f}M | {a['encoder_params'] / 1e6:.2f}M | {a['flops'] / 1e9:.3f} | "
        + ", ".join(f"{p} {s / MIB:.1f} MiB" for p, s in a["size_bytes"].items()) + " |", "",
        "## Plan per layer", "", "| layer | heads | FFN width | sensitivity attn | sensitivity ffn |",
        "|---|---|---|---|---|",
    ]
    scores = r["sensitivity"]["scores"]
    for i, (h, f) in enumerate(zip(a["heads"], a["ffn"])):
        lines.append(f"| {i} | {h} / {b['heads'][i]} | {f} / {b['ffn'][i]} | {scores.get(f'layer{i}.attn', 0):.3f} | "
                     f"{scores.get(f'layer{i}.ffn', 0):.3f} |")
    metric = r.get("metric", "accuracy")
    pytorch = "PyTorch (full vocabulary)" if r.get("vocab") else "PyTorch"  # vocab trimming follows fine-tuning
    lines += ["", f"## Dev {metric_name(metric)}", "", f"| model | {pytorch} | ONNX fp32 | ONNX int8 |",
              "|---|---|---|---|"]
    if acc["dense_pytorch"] is not None:
        lines.append(f"| dense | {_pct(acc['dense_pytorch'])} | {_pct(acc['dense_onnx'].get('fp32'))} | "
                     f"{_pct(acc['dense_onnx'].get('int8'))} |")
    lines.append(f"| trimmed | {_pct(acc['trimmed_pytorch'])} | {_pct(acc['trimmed_onnx'].get('fp32'))} | "
                 f"{_pct(acc['trimmed_onnx'].get('int8'))} |")
    for name in ("dense", "trimmed"):  # the other scores of the ONNX models (QA: exact match)
        for p, scores in (acc.get(f"{name}_onnx_scores") or {}).items():
            others = {k: v for k, v in scores.items() if k != metric}
            if others:
                lines.append(f"| {name} ONNX {p}: " + ", ".join(
                    f"{metric_name(k)} {_pct(v)}" for k, v in others.items()) + " | | | |")
    if r.get("selection"):
        lines += ["", f"PyTorch models kept: {r['selection']}"
                  + ("; a quantisation-aware phase trained the trimmed model for its int8 file" if r.get("qat") else "")
                  + "."]
    q = r.get("int8")
    if q:
        lines += ["", f"int8 variant: **{q['variant']}** ({INT8_VARIANTS[q['variant']].summary}); preset "
                  f"{q['preset']}; chosen by {q['chosen_by']['variant']} / {q['chosen_by']['preset']}"
                  + (f"; {q['calibration_samples']} calibration inputs from the training split"
                     if INT8_VARIANTS[q["variant"]].calibrated else "")
                  + (f"; the inputs of {q['smoothing']['matmuls']} matmuls smoothed (α {q['smoothing']['alpha']:g}"
                     + (f", chosen of {', '.join(f'{a:g}' for a in q['alpha_check']['alphas'])} as the one whose "
                        f"int8 file follows fp32 best on {q['alpha_check']['inputs']} held-out training inputs"
                        if q.get("alpha_check") else "")
                     + f"; loudest / median channel {q['smoothing']['channel_spread_before']} → "
                     f"{q['smoothing']['channel_spread_after']})" if q.get("smoothing") else "")
                  + (f"; {len(q.get('fp32_nodes') or [])} matmul(s) kept fp32 after probing each one's int8 error on "
                     f"{q.get('probe_inputs', 0)} training inputs (share {q.get('fp32_share')})"
                     if "probes" in q else "")
                  + "."]
    if r.get("export_notes"):
        lines += ["", "Export notes: " + "; ".join(r["export_notes"]) + "."]
    v = r.get("vocab")
    if v:
        lines += ["", f"Vocabulary trimmed to the task's: {v['vocab_after']} of {v['vocab_before']} word pieces kept; "
                  f"eval tokens [UNK] {v['eval_unk_before']:.2%} → {v['eval_unk_after']:.2%}, eval texts tokenised "
                  f"differently {v['eval_texts_changed']:.2%}."]
    lines += ["", "## Latency and memory (batch 1)", "",
              "| model | precision | host p50 ms | host p90 ms | peak RSS MiB | device estimate ms |",
              "|---|---|---|---|---|---|"]
    for name in ("dense", "trimmed"):
        for p, row in (r["latency_memory"][name] or {}).items():
            lines.append(f"| {name} | {p} | {row['host_p50_ms']:.2f} | {row['host_p90_ms']:.2f} | "
                         f"{(row['peak_rss_bytes'] or 0) / MIB:.1f} | {row['device_estimate_ms']:.1f} "
                         f"{row['estimate_tag']} |")
    c = r["check"]
    lines += ["", f"Device check ({c['precision']}): latency estimate {c['latency_estimate_ms']:.1f} ms "
              f"{c['latency_tag']} (measured on {c.get('latency_measure', 'the fixed shape')}) vs target "
              f"{c['latency_target_ms']:g} ms "
              f"({'ok' if c['latency_ok'] else 'MISSED'}); peak memory {c['peak_rss_bytes'] / MIB:.1f} MiB vs "
              f"{c['memory_limit_bytes'] / MIB:.0f} MiB ({'ok' if c['memory_ok'] else 'MISSED'}).",
              "", "## Attempts (closed loop)", "",
              "| attempt | trimmable params | binding | accuracy PyTorch | latency estimate ms | memory MiB | met |",
              "|---|---|---|---|---|---|---|"]
    for t in r["attempts"]:
        ch = t["check"]
        lines.append(f"| {t['attempt']} | {t['trimmable_params'] / 1e6:.2f}M | {t['binding']} | "
                     f"{_pct(t['accuracy_pytorch'])} | {ch['latency_estimate_ms']:.1f} | "
                     f"{ch['peak_rss_bytes'] / MIB:.1f} | {'yes' if ch['latency_ok'] and ch['memory_ok'] else 'no'} |")
    lines += ["", "## Stage timings", "", "| stage | seconds | |", "|---|---|---|"]
    for name, secs in r["stage_timings_s"].items():
        lines.append(f"| {name} | {secs:.1f} | {'skipped (unchanged)' if name in r['stages_skipped'] else ''} |")
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in r["package_versions"].items()), ""]
    if r.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in r["plots"]] + [""]
    return "\n".join(lines)


def write_plots(report: dict[str, Any], out: Path, sens: Any) -> list[Path]:
    """Write the per-layer plan plot and the accuracy/latency plot; return all plot paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [out / "sensitivity.png"]
    b, a = report["before"], report["after"]
    layers = range(len(a["heads"]))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].bar(layers, b["heads"], color="#ddd", label="dense")
    axes[0].bar(layers, a["heads"], color="#3a7", label="kept")
    axes[0].set(title="attention heads per layer", xlabel="layer")
    axes[1].bar(layers, b["ffn"], color="#ddd", label="dense")
    axes[1].bar(layers, a["ffn"], color="#37a", label="kept")
    axes[1].set(title="FFN width per layer", xlabel="layer")
    axes[0].legend()
    fig.tight_layout()
    paths.append(_save(fig, out / "plan.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, marker in (("dense", "o"), ("trimmed", "s")):
        rows = report["latency_memory"][name] or {}
        accs = report["accuracy"][f"{name}_onnx"] or {}
        for p, row in rows.items():
            if accs.get(p) is not None:
                ax.scatter(row["host_p50_ms"], 100 * accs[p], marker=marker, s=60)
                ax.annotate(f"{name} {p}", (row["host_p50_ms"], 100 * accs[p]), textcoords="offset points",
                            xytext=(5, 4), fontsize=8)
    ax.set(xlabel="host p50 latency, ms (batch 1)", ylabel="dev accuracy, % (ONNX)",
           title="accuracy against latency")
    fig.tight_layout()
    paths.append(_save(fig, out / "accuracy_latency.png"))
    plt.close(fig)
    return [p for p in paths if p.exists()]


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_sweep(ctx: Any, dense: Any, points: list[Any]) -> dict[str, Any]:
    """Write sweep.json, sweep.md and sweep.png (accuracy against measured latency, Pareto front)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = ctx.precision

    def row(name: str, keep: float, finetune: dict[str, Any], delivered: Any, shape: Any) -> dict[str, Any]:
        bench = delivered.bench[delivered.shipped]  # fp32 where int8 failed its gate
        return {"name": name, "keep": keep, "accuracy_pytorch": finetune["dev_accuracy"], "precision": delivered.shipped,
                "accuracy_onnx": delivered.onnx_accuracy.get(delivered.shipped), "host_p50_ms": bench["p50_ms"],
                "device_estimate_ms": bench["estimate"]["latency_ms"], "peak_rss_bytes": bench["peak_rss_bytes"],
                "total_params": costs.total_params(shape)}

    rows = [row("dense", 1.0, dense.finetune, dense.delivered, ctx.shape)] if dense else []
    rows += [row(f"keep {pt.keep:.0%}", pt.keep, pt.finetune, pt.delivered,
                 ctx.shape.with_units(pt.plan["heads"], pt.plan["ffn"])) for pt in points]
    for row in rows:  # Pareto: no other row is both faster and at least as accurate
        row["pareto"] = not any(o is not row and o["host_p50_ms"] <= row["host_p50_ms"]
                                and o["accuracy_onnx"] >= row["accuracy_onnx"]
                                and (o["host_p50_ms"], o["accuracy_onnx"]) != (row["host_p50_ms"], row["accuracy_onnx"])
                                for o in rows)
    last = points[-1] if points else dense
    body = {"task": ctx.config.task, "profile": ctx.profile.id, "precision": p, "mode": mode_record(ctx),
            "data": _data(ctx, last.delivered if last else None), "rows": rows, "package_versions": package_versions()}
    write_json(ctx.out / "sweep.json", "sensibert.sweep", 1, body)
    md = [f"# sensibert sweep: {ctx.config.task} on {ctx.profile.id} ({p})", "",
          f"Made by: {describe_mode(body['mode'])}.", "",
          f"Data: {describe_data(body['data'])}.", "",
          "| model | params | dev acc PyTorch | dev acc ONNX | host p50 ms | device estimate ms | peak RSS MiB | Pareto |",
          "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        md.append(f"| {row['name']} | {row['total_params'] / 1e6:.2f}M | {_pct(row['accuracy_pytorch'])} | "
                  f"{_pct(row['accuracy_onnx'])} | {row['host_p50_ms']:.2f} | {row['device_estimate_ms']:.1f} | "
                  f"{(row['peak_rss_bytes'] or 0) / MIB:.1f} | {'★' if row['pareto'] else ''} |")
    md += ["", "![accuracy against latency](sweep.png)", ""]
    with atomic_path(ctx.out / "sweep.md") as tmp:
        tmp.write_text("\n".join(md))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["host_p50_ms"])
    ax.plot([r["host_p50_ms"] for r in front], [100 * r["accuracy_onnx"] for r in front], "--", color="#999")
    for row in rows:
        ax.scatter(row["host_p50_ms"], 100 * row["accuracy_onnx"], s=50)
        ax.annotate(row["name"], (row["host_p50_ms"], 100 * row["accuracy_onnx"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set(xlabel=f"host p50 latency, ms ({p}, batch 1)", ylabel="dev accuracy, % (ONNX)", title="sweep")
    fig.tight_layout()
    _save(fig, ctx.out / "sweep.png")
    plt.close(fig)
    return body
