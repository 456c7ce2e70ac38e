"""``sensibert export DIR --out ONNX_DIR``: stage 5, checked ONNX files (fp32, optionally int8)."""

from __future__ import annotations

import argparse

from deploy.int8 import INT8_VARIANTS, PRESETS
from toolchain.calibration import DEFAULT_SELECTION, SELECTIONS
from toolchain.cli._common import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="stage 5: export a (shrunk) classifier to checked ONNX files")
    p.add_argument("model_dir", metavar="DIR", help="classifier directory, e.g. written by sensibert shrink")
    p.add_argument("--out", required=True, metavar="ONNX_DIR", help="artifact folder (written atomically)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--optimize", action="store_true",
                   help="fuse attention, LayerNorm and GELU with onnxruntime's transformer optimizer")
    p.add_argument("--quantize", choices=["int8"], default=None, help="also write a dynamic-int8 model")
    p.add_argument("--no-quantize-embeddings", action="store_true",
                   help="int8: keep the embedding tables in fp32 (default: int8, about 3/4 of their bytes saved)")
    p.add_argument("--int8-variant", default=None, choices=list(INT8_VARIANTS),
                   help="int8 variant (default: the --profile's runtime.int8_variant, else dynamic-smooth with "
                        "--calibration-data, dynamic-per-channel without)")
    p.add_argument("--int8-preset", default=None, choices=list(PRESETS),
                   help="optimum quantisation preset (default: from the --profile's ISA, else avx2)")
    p.add_argument("--int8-fp32-nodes", default=None, metavar="NAMES",
                   help="int8: comma-separated node names left fp32 (a mixed-precision plan; export.json's "
                        "int8.probes lists the names)")
    p.add_argument("--int8-fp32-share", type=float, default=None, metavar="F",
                   help="mixed int8: share of the quantised matmuls' MACs its probes may keep fp32 (default 0.10)")
    p.add_argument("--int8-smooth-alpha", default=None, metavar="A[,A...]",
                   help="smoothed int8 variants: migration strength in (0, 1] (default: the variant's, "
                        "0.9 for dynamic-smooth); several, comma-separated: each is quantised and the one whose "
                        "int8 file follows fp32 best on held-out --calibration-data lines ships")
    p.add_argument("--calibration-data", default=None, metavar="FILE",
                   help="static, mixed and smoothed int8: inputs for range calibration or the probes, one per line "
                        "(tab-separated pairs)")
    p.add_argument("--calibration-samples", type=positive_int, default=128,
                   help="static, mixed and smoothed int8: calibration lines used (default 128)")
    p.add_argument("--calibration-selection", default=DEFAULT_SELECTION, choices=sorted(SELECTIONS),
                   help="which lines calibrate: the first ones, or length-spread (evenly spaced token lengths "
                        "from 8x as many)")
    p.add_argument("--task", default=None, help="task name for the manifest (default: the one fine-tuning recorded)")
    p.add_argument("--task-kind", default=None, choices=["single", "pair", "qa"],
                   help="one sentence or a pair per input (default: from the task)")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="nominal sequence length: parity check and manifest max_length (default: recorded, else 128)")
    p.add_argument("--atol", type=float, default=None, help="fp32 logit tolerance (default 1e-4)")
    p.add_argument("--min-int8-agreement", type=float, default=None,
                   help="lowest share of int8 labels equal to PyTorch's before failing (default 0.5)")
    p.add_argument("--profile", default=None, help="device profile id or file to record in the artifact")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def alphas(text: str | None) -> tuple[float, ...]:
    """Parse ``--int8-smooth-alpha``: one number or several, comma-separated (checked by ExportConfig)."""
    from toolchain.errors import InputError

    try:
        return tuple(float(a) for a in (text or "").split(",") if a.strip())
    except ValueError:
        raise InputError(f"--int8-smooth-alpha {text!r} is not a number or a comma-separated list "
                         "of numbers; write e.g. 0.9 or 0.8,0.9,1") from None


def run(args: argparse.Namespace) -> int:
    from toolchain.cli._common import print_json
    from toolchain.errors import InputError
    from toolchain.export import DEFAULT_OPSET, ExportConfig, export
    from toolchain.parity import FP32_ATOL, INT8_MIN_AGREEMENT

    try:
        config = ExportConfig(opset=DEFAULT_OPSET if args.opset is None else args.opset, optimize=args.optimize,
                              quantize=args.quantize, int8_preset=args.int8_preset,
                              int8_variant=args.int8_variant, calibration_samples=args.calibration_samples,
                              calibration_selection=args.calibration_selection,
                              int8_fp32_nodes=tuple(n.strip() for n in (args.int8_fp32_nodes or "").split(",")
                                                    if n.strip()),
                              **({} if args.int8_fp32_share is None else {"int8_fp32_share": args.int8_fp32_share}),
                              int8_smooth_alphas=alphas(args.int8_smooth_alpha),
                              seq_len=args.seq_len,
                              task=args.task, task_kind=args.task_kind, profile=args.profile,
                              quantize_embeddings=not args.no_quantize_embeddings,
                              fp32_atol=FP32_ATOL if args.atol is None else args.atol,
                              int8_min_agreement=(INT8_MIN_AGREEMENT if args.min_int8_agreement is None
                                                  else args.min_int8_agreement))
    except InputError as exc:  # the config names the value; the CLI adds where to fix it
        raise InputError(f"bad setting: {exc}; fix the flag") from None
    calibration = None
    if args.calibration_data is not None:
        from deploy.predict import read_lines

        calibration = list(read_lines(args.calibration_data))  # parsed by the export for the task's kind
    result = export(args.model_dir, args.out, config, calibration=calibration, progress=True)
    if args.json:
        print_json(result.to_dict())
        return 0
    print(f"wrote {result.out_dir} (opset {result.opset}{', optimised' if result.optimized else ''})")
    for precision, name in result.models.items():
        report = result.parity[precision]
        ops = ", ".join(f"{k} {v}" for k, v in result.op_counts[precision].items() if v)
        print(f"  {name}: {result.sizes[name] / 1e6:.2f} MB, sha256 {result.sha256[name][:12]}; "
              f"max abs diff {report.max_abs_diff:.2g}, label agreement {report.label_agreement:.1%}")
        print(f"    ops: {ops}")
    print(f"  encoder parameters in the graph {result.encoder_params_onnx:,} "
          f"(costs.py {result.encoder_params_expected:,})")
    print(f"  manifest {result.manifest} (task {result.task.task}, {result.task.task_kind})")
    if result.int8:
        q = result.int8
        print(f"  int8: {q['variant']} ({q['chosen_by']['variant']}), preset {q['preset']} ({q['chosen_by']['preset']})"
              + (f", {q['calibration_samples']} calibration inputs ({q['calibration_selection']}, "
                 f"{q['calibration_tokens'][0]}–{q['calibration_tokens'][1]} tokens)" if q["calibration_samples"] else "")
              + (f", {len(q['fp32_nodes'])} node(s) kept fp32" if q.get("fp32_nodes") else ""))
        if q.get("smoothing"):
            sm = q["smoothing"]
            print(f"  smoothed the inputs of {sm['matmuls']} matmuls (α {sm['alpha']:g}): loudest / median channel "
                  f"{sm['channel_spread_before']} → {sm['channel_spread_after']}")
        if q.get("alpha_check"):
            check = q["alpha_check"]
            chosen = check["scores"][f"{check['chosen']:g}"]
            print(f"  α {check['chosen']:g} chosen of {', '.join(f'{a:g}' for a in check['alphas'])}: its int8 file "
                  f"agrees with fp32 on {chosen['agreement']:.1%} of {check['inputs']} held-out calibration inputs")
    for note in result.notes:
        print(f"  note: {note}")
    return 0
