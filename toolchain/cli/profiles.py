"""``sensibert profiles [show NAME]``: the devices sensibert knows and what they allow."""

from __future__ import annotations

import argparse

from toolchain.cli._common import add_model_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profiles", help="list the device profiles, or show one with its derived budget")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?", help="profile id or file (for show)")
    add_model_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deploy.profile import known_profiles, load_profile
    from toolchain.errors import InputError

    if args.action == "list":
        rows = [load_profile(path) for path in known_profiles().values()]
        if args.json:
            print_json([{"id": p.id, "name": p.name, "ram_bytes": p.hardware.ram_bytes,
                         "sustained_gflops_fp32": p.compute.sustained_gflops_fp32,
                         "sustained_gops_int8": p.compute.sustained_gops_int8,
                         "latency_target_ms": p.budget.latency_target_ms, "status": p.status} for p in rows])
            return 0
        print(f"{'id':<22} {'RAM':>8} {'GFLOP/s fp32':>13} {'GOP/s int8':>11} {'target':>8}  status       name")
        for p in rows:
            print(f"{p.id:<22} {_size(p.hardware.ram_bytes):>8} {p.compute.sustained_gflops_fp32:>13g} "
                  f"{p.compute.sustained_gops_int8:>11g} {p.budget.latency_target_ms:>6g}ms  "
                  f"{p.status:<12} {p.name}")
        return 0
    if not args.name:
        raise InputError("profiles show needs a profile id or file; run `sensibert profiles` to list them")
    from toolchain.cli.budget import budget_for, print_budget

    profile = load_profile(args.name)
    budget = budget_for(profile, args.model)
    if args.json:
        print_json({"profile": profile.to_dict(), "budget": budget.to_dict()})
        return 0
    import yaml

    print(yaml.safe_dump(profile.to_dict(), sort_keys=False, width=100).rstrip())
    print()
    print_budget(budget)
    print_latency_tables(profile)
    return 0


def print_latency_tables(profile) -> None:
    """Print the profile's measured latency table (ms per sub-layer at each length), if it has one."""
    from deploy.latency_table import profile_tables

    tables = profile_tables(profile)
    if not tables:
        print("latency table: none (plans use the FLOPs model; `sensibert-deploy calibrate --latency-table` "
              "on the device measures one)")
        return
    for precision, t in tables.items():
        fixed = ", ".join(f"{s}: {v:.3f}" for s, v in sorted(t.fixed_ms.items())) or "not measured"
        print(f"latency table {t.tag} {precision}: hidden {t.hidden}, head size {t.head_size}; {t.host}; "
              f"onnxruntime {t.runtime.get('onnxruntime')}, {t.runtime.get('intra_op_threads')} thread(s); "
              f"fixed ms by length {{{fixed}}}")
        for kind in ("attn", "ffn"):
            print(f"  {kind:<4} units " + " ".join(f"{u:>6}" for u in t.grid[kind]))
            for seq in t.seq_lens:
                print(f"  {seq:>4} tok " + " ".join(f"{v:>6.3f}" for v in t.ms[kind][seq]))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TiB"
