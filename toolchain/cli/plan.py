"""``sensibert plan``: stage 2, how many heads and FFN neurons each layer keeps under a budget.

Reads sensitivity.json, builds the budget from exactly one of --profile, --params, --flops
(with --seq-len) or --keep, and writes plan.json atomically.
"""

from __future__ import annotations

import argparse
import re

from toolchain.cli._common import positive_int

_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_count(text: str) -> int:
    """argparse type: a positive count such as 22000000, 2.2e7, 22M, 1.5G (k, M, G, T = 10^3..10^12)."""
    match = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([kmgt]?)\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a count like 22000000, 2.2e7 or 22M, got {text!r}")
    value = int(float(match.group(1).replace("_", "")) * _SUFFIXES[match.group(2)])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive count, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="stage 2: heads and FFN neurons to keep per layer under a budget")
    p.add_argument("--sensitivity", required=True, metavar="FILE", help="sensitivity.json from sensibert analyze")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--profile", help="device profile id or file: its memory and latency limits")
    budget.add_argument("--params", type=parse_count, help="total parameter count of the model (e.g. 15M)")
    budget.add_argument("--flops", type=parse_count, help="FLOPs per inference at --seq-len (e.g. 1.2G)")
    budget.add_argument("--keep", type=float, help="fraction of the trimmable encoder parameters to keep")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="sequence length for FLOPs (required with --flops; default: the profile's, else 128 "
                        "or the model's maximum if smaller)")
    p.add_argument("--precision", choices=["fp32", "int8"], default=None,
                   help="weights precision of the deployed model (default: the profile's, else fp32)")
    p.add_argument("--allocation", default="proportional",
                   help="proportional (by sensitivity; default), balanced (by sensitivity^0.5, never starves a group), "
                        "uniform, global (one ranking of all units per unit of cost), or latency (most importance "
                        "under the latency target, priced by the --profile's measured latency table)")
    from toolchain.costs import COST_MODELS

    p.add_argument("--cost-model", choices=list(COST_MODELS), default=COST_MODELS[0],
                   help="what prices the plan: flops (default), or latency: the --profile's measured latency "
                        "table (implied by --allocation latency; proportional, balanced and uniform keep their shares)")
    p.add_argument("--latency-ms", type=float, default=None,
                   help="--cost-model latency: the latency cap (default: the profile's target)")
    p.add_argument("--min-keep", type=float, default=0.0,
                   help="smallest fraction of each group's units to keep (default 0.0: a group may go to zero)")
    p.add_argument("--round-to", type=positive_int, default=1,
                   help="make FFN widths multiples of N (or the dense width), e.g. 16 for CPU kernels")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="check that the sensitivity was made on this model directory (default: no check)")
    p.add_argument("--out", required=True, metavar="FILE", help="plan.json to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from toolchain.plan import PlanConfig, allocate, get_allocation
    from toolchain.sensitivity import Sensitivity

    config = PlanConfig(allocation=args.allocation, min_keep=args.min_keep, round_to=args.round_to,
                        cost_model=args.cost_model)
    get_allocation(config.allocation)
    sens = Sensitivity.load(args.sensitivity)
    shape = sens.shape
    if args.model is not None:
        check_model(sens, args.model, args.sensitivity)
    budget, precision = make_budget(args, shape)
    latency = None
    if config.cost_model == "latency":
        from deploy.profile import load_profile
        from toolchain.budget import latency_budget
        from toolchain.errors import InputError

        if args.profile is None:
            raise InputError("--cost-model latency plans against a device's measured latency table; pass --profile "
                             "NAME|FILE of a calibrated profile")
        latency = latency_budget(load_profile(args.profile), precision, budget.seq_len, args.latency_ms)
    plan = allocate(sens, shape, budget, config, latency=latency)
    plan = dataclasses.replace(plan, settings={**plan.settings, "precision": precision})
    out = plan.save(args.out)
    print_plan(plan, sens)
    print(f"wrote {out}")
    return 0


def check_model(sens, model: str, origin: str) -> None:
    """Raise InputError unless the sensitivity file was made on the model directory ``model``."""
    from toolchain.models import dir_shape
    from toolchain.models import model_hash
    from toolchain.plan import architecture_of

    path, shape = dir_shape(model, sens.shape.num_labels)
    if architecture_of(shape) != architecture_of(sens.shape):
        from toolchain.errors import InputError

        raise InputError(f"{origin} was made for another architecture ({architecture_of(sens.shape)}) than "
                         f"{path} ({architecture_of(shape)}); run sensibert analyze on this model")
    sens.check_model(model_hash(path), origin)


def make_budget(args: argparse.Namespace, shape):
    """Return (Budget, precision) from whichever budget flag was given."""
    from toolchain import budget as b
    from toolchain.errors import InputError

    if args.profile is not None:
        from deploy.profile import load_profile

        profile = load_profile(args.profile)
        derived = b.derive_budget(profile, shape, precision=args.precision, seq_len=args.seq_len)
        return derived.to_budget(), derived.precision
    precision = args.precision or "fp32"
    if args.flops is not None:
        if args.seq_len is None:
            raise InputError(f"--flops {args.flops} needs --seq-len: FLOPs grow with the sequence length; "
                             "add e.g. --seq-len 128")
        return b.budget_from_flops(shape, args.flops, args.seq_len), precision
    seq_len = b.check_seq_len(args.seq_len if args.seq_len is not None else min(128, shape.max_positions), shape)
    if args.params is not None:
        return b.budget_from_params(shape, args.params, seq_len), precision
    return b.budget_from_keep(shape, args.keep, seq_len), precision


def print_plan(plan, sens=None) -> None:
    """Print a per-layer table of kept units and the cost / binding line."""
    from toolchain.sensitivity import group_key

    arch = plan.architecture
    print(f"plan ({plan.allocation}): heads of {arch['num_heads']} and FFN neurons of {arch['ffn_size']} kept per layer")
    header = f"{'layer':>5}  {'heads':>7}  {'ffn':>11}"
    print(header + (f"  {'s(attn)':>8}  {'s(ffn)':>8}" if sens is not None else ""))
    for layer, (heads, ffn) in enumerate(zip(plan.heads, plan.ffn)):
        row = f"{layer:>5}  {heads:>3}/{arch['num_heads']:<3}  {ffn:>5}/{arch['ffn_size']:<5}"
        if sens is not None:
            row += f"  {sens.scores[group_key(layer, 'attn')]:>8.4f}  {sens.scores[group_key(layer, 'ffn')]:>8.4f}"
        print(row)
    c = plan.cost
    print(f"cost: {c['trimmable_params'] / 1e6:.3f}M trimmable params ({c['keep_trimmable_params']:.1%} of dense), "
          f"{c['encoder_params'] / 1e6:.3f}M encoder, {c['total_params'] / 1e6:.3f}M total; "
          f"{c['encoder_flops'] / 1e9:.3f} GFLOP encoder at batch {c['batch']}, seq {c['seq_len']} "
          f"({c['keep_encoder_flops']:.1%} of dense)")
    parts = []
    for name, unit in (("params", "params"), ("flops", "FLOPs")):
        room = plan.headroom[name]
        if room["cap"] is None:
            parts.append(f"{name}: no cap")
        else:
            tag = "binds" if name == plan.binding else "headroom"
            parts.append(f"{name} {tag}: {room['headroom']:,} {unit} left of {room['cap']:,} "
                         f"({room['headroom_fraction']:.2%})")
    if "predicted_latency_ms" in c:  # the latency allocation: the table's price, not the FLOPs cap, binds
        m = c["latency_model"]
        print(f"latency: {c['predicted_latency_ms']:.3f} ms predicted at {m['seq_len']} tokens ({m['precision']}, "
              f"measured table {m['tag']} of {m['host']}) under a {m['max_ms']:g} ms cap")
    print("budget: " + "; ".join(parts) + ("; the dense model fits, nothing binds" if plan.binding == "none" else ""))
