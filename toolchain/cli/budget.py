"""``sensibert budget --profile NAME``: what a model must meet to run on a device."""

from __future__ import annotations

import argparse

from toolchain.cli._common import add_model_arg, print_json
from toolchain.models import dir_shape


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("budget", help="the largest model a device allows (memory, latency) and the keep fraction")
    p.add_argument("--profile", required=True, help="device profile id or file (see `sensibert profiles`)")
    add_model_arg(p)
    p.add_argument("--precision", choices=["fp32", "int8"], default=None,
                   help="weights precision (default: the profile's)")
    p.add_argument("--latency-ms", type=float, default=None, help="latency target (default: the profile's)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length (default: the profile's)")
    p.add_argument("--num-labels", type=int, default=2, help="classifier outputs of the task head")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def budget_for(profile, model: str | None, precision: str | None = None, latency_ms: float | None = None,
               seq_len: int | None = None, num_labels: int = 2):
    """Return the DeviceBudget of ``profile`` for the model directory (None: packaged default)."""
    from toolchain.budget import derive_budget

    _, shape = dir_shape(model, num_labels)
    return derive_budget(profile, shape, precision=precision, seq_len=seq_len, latency_ms=latency_ms)


def print_budget(b) -> None:
    """Print a DeviceBudget for people."""
    mib = 2**20
    print(f"device budget: profile {b.profile}, {b.precision}, batch {b.batch}, seq {b.seq_len}, "
          f"target {b.latency_target_ms:g} ms")
    print(f"  memory : {b.memory_for_model_bytes / mib:,.1f} MiB for the model process − overhead "
          f"{b.overhead_bytes / mib:,.1f} MiB − activations {b.activation_bytes / mib:,.1f} MiB, "
          f"÷ resident factor {b.resident_factor:g}")
    print(f"           → at most {max(b.max_params, 0) / 1e6:,.2f}M parameters "
          f"(dense model {b.dense_params / 1e6:.2f}M; untrimmed parts {b.fixed_params / 1e6:.2f}M)")
    print(f"  latency: {b.max_flops / 1e9:,.3f} GFLOP per inference allowed "
          f"(dense model {b.dense_flops / 1e9:.3f} GFLOP)")
    print(f"  keep   : memory allows {min(b.keep_memory, 9.99):.1%} and latency allows "
          f"{min(b.keep_latency, 9.99):.1%} of the trimmable encoder parameters")
    if not b.feasible:
        print("  result : INFEASIBLE")
    elif b.binding == "none":
        print("  result : the dense model fits; nothing binds (keep 100%)")
    else:
        print(f"  result : {b.binding} binds; the trimmer will keep {b.keep:.1%} of the trimmable encoder")


def run(args: argparse.Namespace) -> int:
    from deploy.profile import load_profile
    from toolchain.errors import InfeasibleBudget

    profile = load_profile(args.profile)
    b = budget_for(profile, args.model, args.precision, args.latency_ms, args.seq_len, args.num_labels)
    if args.json:
        print_json(b.to_dict())
    else:
        print_budget(b)
    if not b.feasible:
        raise InfeasibleBudget(b.infeasible_reason())
    return 0
