"""Speed benchmark (issue Step 9): every int8 variant and preset against fp32 and the optimum peer,
at a fixed 128 tokens and at the SST-2 dev length distribution, 1 and 2 threads.

Models are the trained SST-2 models of the Step 6 benchmark (bench/accuracy_modes.py, seed 0):
the dense model and the default mode's (teacher-first) 70/50/30% models. Each is exported fused
in fp32 and, separately, with every int8 variant (deploy.int8.INT8_VARIANTS) under the avx2
preset (the old default, u8 weights) and the avx512_vnni preset (this host's ISA; s8 weights);
static variants calibrate on the first 128 SST-2 training sentences. The peer is the dense
fine-tuned model as a user would get it from optimum alone: ``ORTModelForSequenceClassification
.from_pretrained(export=True)`` then ``ORTQuantizer`` with ``AutoQuantizationConfig.avx512_vnni
(is_static=False, per_channel=False)`` (no graph fusion).

The peer is timed twice: with onnxruntime's default session (as optimum's ORTModel opens it,
the row the goals use) and with deploy/'s session, which keeps onnxruntime from fusing Add +
LayerNormalization into its slow SkipLayerNormalization kernel (deploy.session.DISABLED_OPTIMIZERS).
Every artifact's dev accuracy (872 sentences, onnxruntime) stands beside its speed. Timing: all
sessions of one thread count live in one process and are timed interleaved (each round or each
input runs every session once, in a seeded shuffled order), so load on this shared host hits
all rows alike. Fixed: 100 rounds of one 128-token input after 10 warm-up rounds. Real: every
dev sentence at its own length, batch 1. Session settings: the host profile's (prepacking on).

    OMP_NUM_THREADS=1 python bench/speed.py            # exports, accuracy, timing, operator profiles
    OMP_NUM_THREADS=1 python bench/speed.py --tune     # spinning and arena at 2 threads, one session at a time
    python bench/speed.py --docs                       # tables into docs/latency.md (table:speed)
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import (DOCS, RESULTS, ROOT, add_table_flags, md_row, md_table, read_result,  # noqa: E402
                      tables_mode, write_result)

MODES = Path("/tmp/sensibert-bench-modes")  # the Step 6 benchmark's work folder (its trained models)
MODELS = {"dense": MODES / "dense-s0" / "trimmed", "keep-70": MODES / "sensitivity_teacher-k70-s0" / "trimmed",
          "keep-50": MODES / "sensitivity_teacher-k50-s0" / "trimmed",
          "keep-30": MODES / "sensitivity_teacher-k30-s0" / "trimmed"}
PEER_SOURCE = MODES / "dense-s0" / "finetuned"
PRESETS = ("avx2", "avx512_vnni")
RESULT = RESULTS / "speed.json"
OPS = RESULTS / "speed_ops.json"
TUNING = RESULTS / "speed_tuning.json"
HOST = ROOT / "bench" / "host-x86-2core.yaml"
DOC = DOCS / "latency.md"
FIXED_ROUNDS, WARMUP, SEQ = 100, 10, 128


def build(work: Path) -> dict[str, dict]:
    """Export every (model, precision/variant/preset) artifact once; return name -> record."""
    from deploy.int8 import INT8_VARIANTS
    from toolchain.tasks import load_task_data
    from toolchain.export import ExportConfig, export
    from toolchain.models import load_tokenizer

    data = load_task_data("sst2", load_tokenizer(MODELS["dense"]), max_length=64, max_train_samples=None)
    calibration = list(data.train_texts[:128])
    arts: dict[str, dict] = {}
    for model, src in MODELS.items():
        for variant in [None, *INT8_VARIANTS]:
            for preset in ([None] if variant is None else PRESETS):
                name = f"{model}/fp32" if variant is None else f"{model}/{variant}/{preset}"
                out = work / name.replace("/", "__")
                if not (out / "sensibert.json").is_file():
                    export(src, out, ExportConfig(optimize=True, quantize=None if variant is None else "int8",
                                                  task="sst2", seq_len=64, int8_variant=variant,
                                                  int8_preset=preset),
                           calibration=calibration if variant and INT8_VARIANTS[variant].static else None)
                    print(f"exported {name}", flush=True)
                arts[name] = {"model": model, "precision": "fp32" if variant is None else "int8", "variant": variant,
                              "preset": preset, "artifact": str(out),
                              "file": str(out / ("model.onnx" if variant is None else "model.int8.onnx"))}
    peer = {"model": "dense", "precision": "int8", "variant": "optimum", "preset": "avx512_vnni", "artifact": None,
            "file": str(build_peer(work / "peer"))}
    arts["peer/optimum-int8"] = {**peer, "session": "onnxruntime defaults, as optimum's ORTModel opens it"}
    arts["peer/optimum-int8+deploy-session"] = {**peer, "session": "deploy/'s session (SkipLayerNormFusion off)"}
    return arts


def build_peer(work: Path) -> Path:
    """The dense model through optimum's exporter and ORTQuantizer, nothing of ours."""
    target = work / "q" / "model_quantized.onnx"
    if target.is_file():
        return target
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    model = ORTModelForSequenceClassification.from_pretrained(str(PEER_SOURCE), export=True)
    model.save_pretrained(str(work / "fp32"))
    quantizer = ORTQuantizer.from_pretrained(str(work / "fp32"))
    quantizer.quantize(AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False), str(work / "q"))
    return target


def dev_split() -> tuple[list[str], list[int]]:
    from toolchain.tasks import load_task_data
    from toolchain.models import load_tokenizer

    data = load_task_data("sst2", load_tokenizer(MODELS["dense"]), max_length=64, max_train_samples=8)
    return data.eval_items()


def accuracy(file: str, tokenizer, items: list[str], labels: list[int]) -> float:
    """Dev accuracy of one ONNX file with onnxruntime, batches of 64 padded to their longest."""
    import numpy as np

    from deploy.predict import encode
    from deploy.session import open_session, session_settings

    session = open_session(file, settings=session_settings(None, 2))
    names = {i.name for i in session.get_inputs()}
    correct = 0
    for s in range(0, len(items), 64):
        arrays, _ = encode(tokenizer, items[s:s + 64])
        logits = session.run(None, {k: v for k, v in arrays.items() if k in names})[0]
        correct += int((np.argmax(logits, axis=1) == np.asarray(labels[s:s + 64])).sum())
    return correct / len(items)


def time_all(arts: dict[str, dict], tokenizer, items: list[str], threads: int) -> dict[str, dict]:
    """Time every artifact interleaved: fixed 128 tokens, then every dev sentence at its own length."""
    import numpy as np

    from deploy.predict import bench_inputs
    from deploy.predict import encode
    from deploy.profile import load_profile
    from deploy.session import open_session, session_settings

    settings = session_settings(load_profile(str(HOST)).runtime, threads)
    if threads > 1:  # idle sessions' spinning pool threads would take the cores the timed one needs
        settings = dataclasses.replace(settings, session_config={**settings.session_config,
                                                                 "session.intra_op.allow_spinning": "0"})
    plain = dataclasses.replace(settings, disabled_optimizers=())  # what a user of optimum runs
    sessions = {n: open_session(a["file"], settings=plain if n == "peer/optimum-int8" else settings)
                for n, a in arts.items()}
    names = {n: {i.name for i in s.get_inputs()} for n, s in sessions.items()}

    def feed(n, arrays):
        return {k: v for k, v in arrays.items() if k in names[n]}

    fixed = bench_inputs(tokenizer, "single", 1, SEQ)
    rng = random.Random(threads)
    order = list(sessions)
    t_fixed = {n: [] for n in sessions}
    for r in range(WARMUP + FIXED_ROUNDS):
        rng.shuffle(order)
        for n in order:
            f = feed(n, fixed)
            t0 = time.perf_counter()
            sessions[n].run(None, f)
            if r >= WARMUP:
                t_fixed[n].append((time.perf_counter() - t0) * 1e3)
    real = [encode(tokenizer, [x])[0] for x in items]
    t_real = {n: [] for n in sessions}
    for arrays in real[:WARMUP] + real:
        rng.shuffle(order)
        for n in order:
            f = feed(n, arrays)
            t0 = time.perf_counter()
            sessions[n].run(None, f)
            t_real[n].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for n in sessions:
        real_t = t_real[n][WARMUP:]
        out[n] = {"fixed_p50_ms": float(np.percentile(t_fixed[n], 50)),
                  "fixed_p90_ms": float(np.percentile(t_fixed[n], 90)),
                  "real_p50_ms": float(np.percentile(real_t, 50)), "real_p90_ms": float(np.percentile(real_t, 90)),
                  "real_p99_ms": float(np.percentile(real_t, 99)), "real_mean_ms": statistics.fmean(real_t)}
    return out


def run(work: Path) -> None:
    import os

    from deploy.artifacts import package_versions
    from deploy.calibrate import host_description
    from deploy.opprofile import profile_run
    from deploy.predict import load_tokenizer as deploy_tokenizer
    from deploy.manifest import read_manifest
    from toolchain.costs import shape_from_config, total_flops

    arts = build(work)
    tokenizer = deploy_tokenizer(read_manifest(arts["dense/fp32"]["artifact"]))
    items, labels = dev_split()
    partial = work / "partial.json"  # accuracies and timings so far: a stopped run resumes
    done = read_result(partial) if partial.is_file() else {"accuracy": {}, "timings": {}}
    for n, a in arts.items():
        if n not in done["accuracy"]:
            same = next((x for x in done["accuracy"] if arts.get(x, {}).get("file") == a["file"]), None)
            done["accuracy"][n] = done["accuracy"][same] if same else accuracy(a["file"], tokenizer, items, labels)
            write_result(partial, done, indent=None)
        a["dev_accuracy"] = done["accuracy"][n]
        print(f"{n:<40} dev accuracy {100 * a['dev_accuracy']:.2f}%", flush=True)
        a["size_bytes"] = os.path.getsize(a["file"])
    flops = {}
    for model, src in MODELS.items():
        from transformers import AutoConfig

        import toolchain.modeling  # noqa: F401  registers the sensibert config

        shape = shape_from_config(AutoConfig.from_pretrained(str(src)))
        flops[model] = {"seq128": total_flops(shape, 1, SEQ),
                        "heads": list(shape.heads), "ffn": list(shape.ffn)}
    for threads in ("1", "2"):
        if threads not in done["timings"]:
            print(f"timing {len(arts)} sessions at {threads} thread(s) ...", flush=True)
            done["timings"][threads] = time_all(arts, tokenizer, items, int(threads))
            write_result(partial, done, indent=None)
    timings = done["timings"]
    lengths = [int(a.shape[1]) for a in (encode_len(tokenizer, x) for x in items)]
    body = {"host": host_description(), "package_versions": package_versions(), "seq_len_fixed": SEQ,
            "fixed_rounds": FIXED_ROUNDS, "warmup": WARMUP, "dev_inputs": len(items),
            "dev_tokens": {"mean": statistics.fmean(lengths), "p50": statistics.median(lengths),
                           "max": max(lengths)},
            "models": flops, "artifacts": arts,
            "timings": timings,
            "session_settings": {"1": "the host profile's", "2": "the host profile's with session.intra_op.allow_spinning=0 "
                                 "(29 idle sessions' spinning threads would otherwise take the second core)"}}
    write_result(RESULT, body, indent=1)
    print(f"wrote {RESULT}", flush=True)
    ops = {}
    for n in ("dense/fp32", "keep-30/fp32", "keep-50/fp32", "dense/dynamic-per-channel/avx512_vnni",
              "keep-50/dynamic/avx512_vnni", "keep-50/dynamic-per-channel/avx512_vnni", "keep-50/static-qdq/avx512_vnni",
              "keep-50/dynamic-per-channel/avx2"):
        for seq in (SEQ, 25):
            p = profile_run(arts[n]["artifact"], arts[n]["precision"], seq_len=seq, threads=1, runs=30)
            ops[f"{n}@{seq}"] = p.to_dict()
    write_result(OPS, ops, indent=1)
    print(f"wrote {OPS}", flush=True)


TUNE_SETTINGS = {"profile defaults (spinning on, arena on)": {},
                 "spinning off": {"session.intra_op.allow_spinning": "0"},
                 "arena off": {"arena": False},
                 "spinning off, arena off": {"session.intra_op.allow_spinning": "0", "arena": False}}


def tune(work: Path, target: str = "keep-50/dynamic-per-channel/avx512_vnni") -> None:
    """Session settings on this host for one artifact at 2 threads: one session alive at a time,
    blocks of every setting alternated 5 times (real dev inputs, then 30 fixed 128-token runs)."""
    import numpy as np

    from deploy.predict import bench_inputs
    from deploy.predict import encode
    from deploy.predict import load_tokenizer as deploy_tokenizer
    from deploy.manifest import read_manifest
    from deploy.profile import load_profile
    from deploy.session import open_session, session_settings

    arts = build(work)
    tokenizer = deploy_tokenizer(read_manifest(arts["dense/fp32"]["artifact"]))
    items, _ = dev_split()
    real = [encode(tokenizer, [x])[0] for x in items[:300]]
    fixed = bench_inputs(tokenizer, "single", 1, SEQ)
    base = session_settings(load_profile(str(HOST)).runtime, 2)
    times = {k: {"real": [], "fixed": []} for k in TUNE_SETTINGS}
    for block in range(5):
        for name, change in TUNE_SETTINGS.items():
            config = {k: v for k, v in change.items() if k != "arena"}
            settings = dataclasses.replace(base, session_config={**base.session_config, **config},
                                           enable_cpu_mem_arena=change.get("arena", base.enable_cpu_mem_arena))
            session = open_session(arts[target]["file"], settings=settings)
            names = {i.name for i in session.get_inputs()}
            for arrays in real[:10]:
                session.run(None, {k: v for k, v in arrays.items() if k in names})
            for arrays in real:
                f = {k: v for k, v in arrays.items() if k in names}
                t0 = time.perf_counter()
                session.run(None, f)
                times[name]["real"].append((time.perf_counter() - t0) * 1e3)
            f = {k: v for k, v in fixed.items() if k in names}
            for _ in range(30):
                t0 = time.perf_counter()
                session.run(None, f)
                times[name]["fixed"].append((time.perf_counter() - t0) * 1e3)
            del session
        print(f"tuning block {block + 1}/5 done", flush=True)
    rows = [{"setting": k, "real_mean_ms": statistics.fmean(v["real"]), "real_p50_ms": float(np.percentile(v["real"], 50)),
             "fixed_p50_ms": float(np.percentile(v["fixed"], 50))} for k, v in times.items()]
    write_result(TUNING, {"artifact": target, "threads": 2, "real_inputs": len(real), "blocks": 5, "rows": rows},
                 indent=1)
    print(f"wrote {TUNING}", flush=True)


def encode_len(tokenizer, text):
    from deploy.predict import encode

    return encode(tokenizer, [text])[0]["input_ids"]


# ---------------------------------------------------------------- tables from the committed results

SHIP_RULE = ("the shipped variant is the fastest at the real length distribution (1 thread, 50% model, this "
             "host's preset) among those whose dev accuracy is within 0.5 point of the fp32 artifacts', "
             "averaged over the four models (3,488 predictions: one model's 872 differ by noise of a point)")
GROUPS = {"MatMul": ("MatMul", "DynamicQuantizeMatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul",
                     "MatMulIntegerToFloat", "FusedGemm", "Gemm"),
          "Attention": ("Attention", "QAttention"),
          "LayerNorm + residual Add": ("SkipLayerNormalization", "LayerNormalization", "Add",
                                       "EmbedLayerNormalization", "QEmbedLayerNormalization"),
          "Gelu": ("BiasGelu", "Gelu", "FastGelu"),
          "(de)quantise": ("DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear")}


def mean_delta(arts: dict, variant: str, preset: str) -> float:
    """Return an int8 variant's dev accuracy change against fp32 under ``preset``, averaged over the models."""
    return statistics.fmean(arts[f"{m}/{variant}/{preset}"]["dev_accuracy"] - arts[f"{m}/fp32"]["dev_accuracy"]
                            for m in MODELS)


def chosen(body: dict, preset: str = "avx512_vnni") -> str:
    """Return the int8 variant the rule picks (see SHIP_RULE)."""
    arts, t = body["artifacts"], body["timings"]["1"]
    variants = {a["variant"] for a in arts.values() if a["precision"] == "int8" and a["artifact"]}
    ok = [v for v in variants if mean_delta(arts, v, preset) >= -0.005]
    return min(ok, key=lambda v: t[f"keep-50/{v}/{preset}"]["real_mean_ms"])


def tables() -> str:
    """Return the Step 9 Markdown: summary with goals, every variant, the operator profiles."""
    body = read_result(RESULT)
    arts, models = body["artifacts"], body["models"]
    ship = chosen(body)
    t1, t2 = body["timings"]["1"], body["timings"]["2"]
    peer = "peer/optimum-int8"
    d32 = {th: body["timings"][th]["dense/fp32"] for th in ("1", "2")}

    def cut(model):
        return models["dense"]["seq128"] / models[model]["seq128"]

    lines = [f"Host: {body['host']}; onnxruntime {body['package_versions'].get('onnxruntime')}; batch 1. Fixed: "
             f"{body['fixed_rounds']} interleaved rounds of one {body['seq_len_fixed']}-token input; real: the "
             f"{body['dev_inputs']} SST-2 dev sentences at their own lengths (mean {body['dev_tokens']['mean']:.1f} "
             f"tokens, max {body['dev_tokens']['max']}); p50 in ms. Speed-ups are ratios of times measured "
             "side by side in one process. Shipped int8 variant: "
             f"**{ship}** with the avx512_vnni preset ({SHIP_RULE}).", "",
             *md_table(["model", "artifact", "dev acc %", "FLOPs cut", "128 tok 1T ms", "× dense fp32",
                        "real 1T p50 / p99 ms", "real × peer", "128 tok 2T ms", "real 2T p50 ms", "real 2T × peer"])]
    rows = [(peer, "dense")] + [(f"{m}/fp32", m) for m in MODELS] + [(f"{m}/{ship}/avx512_vnni", m) for m in MODELS]
    rows = [rows[0]] + [r for m in MODELS for r in rows[1:] if r[1] == m]
    rows.insert(1, (f"{peer}+deploy-session", "dense"))
    for n, m in rows:
        a = arts[n]
        label = ("optimum int8 (peer)" if n == peer else "optimum int8, deploy/'s session" if n.startswith(peer)
                 else "fp32" if a["precision"] == "fp32" else f"int8 {a['variant']}")
        lines.append(md_row([m, label, f"{100 * a['dev_accuracy']:.2f}", f"{cut(m):.2f}×", f"{t1[n]['fixed_p50_ms']:.2f}",
                             f"{d32['1']['fixed_p50_ms'] / t1[n]['fixed_p50_ms']:.2f}×",
                             f"{t1[n]['real_p50_ms']:.2f} / {t1[n]['real_p99_ms']:.2f}",
                             f"{t1[peer]['real_mean_ms'] / t1[n]['real_mean_ms']:.2f}×", f"{t2[n]['fixed_p50_ms']:.2f}",
                             f"{t2[n]['real_p50_ms']:.2f}", f"{t2[peer]['real_mean_ms'] / t2[n]['real_mean_ms']:.2f}×"]))
    k50 = f"keep-50/{ship}/avx512_vnni"
    g1 = d32["1"]["fixed_p50_ms"] / t1[k50]["fixed_p50_ms"]
    eff30 = (d32["1"]["fixed_p50_ms"] / t1["keep-30/fp32"]["fixed_p50_ms"]) / cut("keep-30")
    g3 = t1[peer]["real_mean_ms"] / t1[k50]["real_mean_ms"]
    verdict = lambda ok: "**met**" if ok else "**missed**"  # noqa: E731
    lines += ["", "Goals (issue Step 9):", "",
              f"- int8 + 50% trimming ≥ 3.5× faster than dense fp32 (128 tokens, one thread): {verdict(g1 >= 3.5)} "
              f"({g1:.2f}×).",
              f"- fp32 efficiency (speed-up ÷ FLOPs cut) ≥ 0.9 at 30%: {verdict(eff30 >= 0.9)} ({eff30:.2f}).",
              f"- real length distribution: the 50% int8 artifact ≥ 2× faster than the peer's dense int8 "
              f"(mean per input, one thread): {verdict(g3 >= 2.0)} ({g3:.2f}×).", ""]
    def variant_row(model: str, variant: str, n: str) -> str:
        a, base = arts[n], arts[f"{model}/fp32"]
        return md_row([model, variant, a["preset"] or "–", f"{100 * a['dev_accuracy']:.2f}",
                       f"{100 * (a['dev_accuracy'] - base['dev_accuracy']):+.2f}", f"{a['size_bytes'] / 2**20:.1f}",
                       f"{t1[n]['fixed_p50_ms']:.2f}", f"{t1[f'{model}/fp32']['fixed_p50_ms'] / t1[n]['fixed_p50_ms']:.2f}×",
                       f"{t1[n]['real_p50_ms']:.2f}", f"{t1[n]['real_mean_ms']:.2f}"])

    lines += ["Every int8 variant and preset (one thread; accuracy on the 872 dev sentences):", "",
              *md_table(["model", "variant", "preset", "dev acc %", "Δ vs fp32", "file MiB", "128 tok ms",
                         "× fp32 same model", "real p50 ms", "real mean ms"])]
    lines += [variant_row(m, a["variant"] or "fp32", n) for m in MODELS for n, a in arts.items()
              if a["model"] == m and not n.startswith(peer)]
    lines.append(variant_row("dense", "optimum peer", peer))
    lines += ["", "The ship rule's inputs: each variant's dev accuracy change against fp32, averaged over the four "
              "models, and the 50% model's real-length latency (one thread):", "",
              *md_table(["variant", "preset", "mean Δ vs fp32 (4 models)", "50% real mean ms", "within 0.5 point"])]
    for v in sorted({a["variant"] for a in arts.values() if a["precision"] == "int8" and a["artifact"]}):
        for pr in PRESETS:
            d = mean_delta(arts, v, pr)
            lines.append(md_row([v, pr, f"{100 * d:+.2f}", f"{t1[f'keep-50/{v}/{pr}']['real_mean_ms']:.2f}",
                                 "yes" if d >= -0.005 else "no"]))
    if OPS.is_file():
        ops = read_result(OPS)
        lines += ["", "Where the time goes (`sensibert-deploy ops`, one thread, ms per run by operator group; the "
                  "profiler's own run time, which includes its overhead):", "",
                  *md_table(["artifact", "tokens", "run ms", *GROUPS, "between kernels"])]
        for key, p in ops.items():
            name, seq = key.rsplit("@", 1)
            by = {g: sum(o["ms"] for o in p["ops"] if o["op_type"] in members) for g, members in GROUPS.items()}
            between = next((o["ms"] for o in p["ops"] if o["op_type"].startswith("(")), 0.0)
            lines.append(md_row([name, seq, f"{p['run_ms']:.2f}",
                                 *(f"{by[g]:.2f} ({100 * by[g] / p['run_ms']:.0f}%)" for g in GROUPS),
                                 f"{between:.2f} ({100 * between / p['run_ms']:.0f}%)"]))
    if TUNING.is_file():
        tb = read_result(TUNING)
        rows = tb["rows"]
        ref = rows[0]
        lines += ["", f"Session settings at {tb['threads']} threads on this host (`bench/speed.py --tune`; "
                  f"{tb['artifact']}, one session alive at a time, {tb['blocks']} alternated blocks of the first "
                  f"{tb['real_inputs']} dev inputs and 30 fixed 128-token runs each):", "",
                  *md_table(["setting", "real mean ms", "gain", "128 tok p50 ms", "gain"],
                            [[r["setting"], f"{r['real_mean_ms']:.3f}", f"{ref['real_mean_ms'] / r['real_mean_ms']:.2f}×",
                              f"{r['fixed_p50_ms']:.2f}", f"{ref['fixed_p50_ms'] / r['fixed_p50_ms']:.2f}×"]
                             for r in rows])]
    return "\n".join(lines) + "\n"



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sensibert-bench-speed2"))
    add_table_flags(parser, DOC)
    parser.add_argument("--tune", action="store_true", help="session settings at 2 threads (speed_tuning.json)")
    args = parser.parse_args()
    if args.tune:
        tune(args.work)
        return 0
    if tables_mode(args, DOC, lambda: {"table:speed": tables()}):
        return 0
    run(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
