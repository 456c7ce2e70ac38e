"""``sensibert-deploy``: run, measure and check an artifact on the device, without torch.

Subcommands: predict (classify text lines), bench (measure under a device profile),
calibrate (time the matrix-multiply probe and write it into a copy of a profile), check
(verify hashes and measure against the profile's memory and latency budget).
Exit codes: 0 ok; 1 completed but something failed (a skipped line, a budget not met);
2 a problem the message names (bad input, broken artifact).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from deploy.artifacts import check_writable
from deploy.errors import InputError, SensibertError

log = logging.getLogger("deploy")


def whole_number(minimum: int):
    """Return an argparse type accepting whole numbers ≥ ``minimum`` (a usage error otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            wanted = "a positive whole number" if minimum == 1 else f"≥ {minimum}"
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value
    return parse


_positive = whole_number(1)


def _int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated whole numbers, e.g. 16,32,64."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated whole numbers, e.g. 16,32,64; got {text!r}") from None
_non_negative = whole_number(0)



def add_ops_args(p: Any, artifact: bool = True) -> None:
    """The operator-profile flags, shared by ``sensibert-deploy ops`` and ``sensibert inspect --profile-run``
    (which has its own artifact argument and --seq-len)."""
    if artifact:
        p.add_argument("artifact", help="artifact folder (with sensibert.json)")
        p.add_argument("--seq-len", type=_positive, help="tokens per input (default: the artifact's max_length)")
    p.add_argument("--precision", choices=("fp32", "int8"), help="model to profile (default fp32 when present)")
    p.add_argument("--batch", type=_positive, default=1, help="inputs per run (default 1)")
    p.add_argument("--threads", type=_positive, default=1, help="intra-op threads (default 1)")
    p.add_argument("--runs", type=_positive, default=20, help="profiled runs (default 20)")
    p.add_argument("--warmup", type=_non_negative, default=5, help="unprofiled runs first (default 5)")


def run_ops(args: argparse.Namespace) -> int:
    """Profile ``args.artifact`` and print (and write) the per-operator table."""
    from deploy.artifacts import write_json
    from deploy.opprofile import format_profile, profile_run

    prof = profile_run(args.artifact, args.precision, args.seq_len, batch=args.batch, threads=args.threads,
                       runs=args.runs, warmup=args.warmup)
    if getattr(args, "out", None):
        write_json(args.out, "sensibert.op_profile", 1, prof.to_dict())
    print(json.dumps(prof.to_dict(), indent=2) if args.json else format_profile(prof))
    return 0


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors read like every other error: one line, exit 2 (its subcommands'
    parsers are of this class too)."""

    def error(self, message: str) -> Any:
        self.exit(2, f"error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every subcommand."""
    parser = Parser(prog="sensibert-deploy",
                    description="Run, measure and check a sensibert artifact, without torch.",
                    epilog="Exit codes: 0 ok, 1 completed with failures, 2 error.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("predict", help="classify text lines (tab-separated pairs for pair tasks; JSON lines "
                                       '{"question": ..., "context": ...} for a QA artifact)')
    p.add_argument("artifact", help="artifact folder (with sensibert.json)")
    p.add_argument("--input", default="-", metavar="FILE", help="text file, one input per line; - for stdin (default)")
    p.add_argument("--batch-size", type=_positive, default=16,
                   help="lines per onnxruntime call (default 16); an int8 file runs each line in its own call, "
                        "so a line's answer never depends on the lines beside it")
    p.add_argument("--precision", choices=("fp32", "int8"), help="model to use (default fp32 when present)")
    p.add_argument("--threads", type=_positive, help="intra-op threads (default: the CPUs this process may use)")
    p.add_argument("--format", choices=("jsonl", "table"), default="jsonl", help="output format (default jsonl)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the artifact's files")
    p.set_defaults(func=_predict)

    for name, helptext in (("bench", "measure latency, load time and peak memory under a device profile"),
                           ("check", "verify hashes, measure, and fail when the profile's budget is not met")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("artifact", help="artifact folder (with sensibert.json)")
        p.add_argument("--profile", required=True, metavar="NAME|FILE", help="device profile id or YAML file")
        p.add_argument("--precision", choices=("fp32", "int8"), help="default: the profile's runtime.precision")
        p.add_argument("--runs", type=_positive, default=50 if name == "bench" else 30, help="timed runs")
        p.add_argument("--warmup", type=_non_negative, default=5, help="untimed runs first (default 5)")
        p.add_argument("--out", metavar="FILE", help="write the result as JSON")
        p.add_argument("--json", action="store_true", help="print JSON instead of the table")
        if name == "bench":
            p.add_argument("--seq-len", type=_positive, help="tokens per input (default: the profile's budget.seq_len)")
            p.add_argument("--batch", type=_positive, help="inputs per run (default: the profile's budget.batch)")
            p.add_argument("--threads", type=_positive, help="intra-op threads (default: the profile's)")
            p.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak-memory probe")
            p.add_argument("--input", metavar="FILE", help="time each input of FILE at its own length instead "
                           "(one per line, as predict reads them): p50/p90/p99 and one latency per length bucket")
            p.add_argument("--buckets", type=_int_list, default=None, metavar="N,N,...",
                           help="--input: length bucket bounds (default 16,32,64,128,256,512, capped at max_length)")
            p.add_argument("--pad-to-buckets", action="store_true",
                           help="--input: pad each input to its bucket bound, --batch inputs of a bucket per run")
            p.add_argument("--max-inputs", type=_positive, help="--input: the first N usable inputs")
            p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the artifact's files")
        p.set_defaults(func=_bench if name == "bench" else _check)

    p = sub.add_parser("ops", help="time per operator type of one artifact (onnxruntime's profiler)")
    add_ops_args(p)
    p.add_argument("--out", metavar="FILE", help="write the profile as JSON")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_ops)

    p = sub.add_parser("calibrate", help="time the matrix-multiply probe here and write it into a copy of a profile")
    p.add_argument("--profile", required=True, metavar="NAME|FILE", help="device profile id or YAML file")
    p.add_argument("--out", metavar="FILE", help="where to write the copy (default: ./<id>.calibrated.yaml)")
    p.add_argument("--threads", type=_positive, help="intra-op threads (default: the profile's)")
    p.add_argument("--runs", type=_positive, default=50, help="timed runs per precision (default 50)")
    p.add_argument("--probe", default=None, metavar="NAME", help="probe matmul_MxKxN (default matmul_128x384x1536)")
    p.add_argument("--latency-table", action="store_true",
                   help="also time attention blocks of every head count and FFN blocks of a grid of widths (fp32 and "
                        "int8, several lengths) and write the table beside the profile copy")
    p.add_argument("--artifact", metavar="DIR", action="append",
                   help="latency table: an artifact of the model to plan for (its width; its whole-model time gives "
                        "the fixed cost of embeddings and head); repeat with differently trimmed artifacts of the "
                        "same model to also fit how much slower sub-layers run inside the graph")
    p.add_argument("--width", metavar="H,D,N", default=None,
                   help="latency table without --artifact: hidden size, head size, dense FFN width (default 384,32,1536)")
    p.add_argument("--seq-lens", metavar="N,N,...", default=None, help="latency table: lengths (default 16,32,64,128)")
    p.add_argument("--table-runs", type=_positive, default=20, help="latency table: timed runs per block (default 20)")
    p.set_defaults(func=_calibrate)
    return parser


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None, interrupted: str = "interrupted") -> int:
    """Parse ``argv`` and run the chosen subcommand; a SensibertError becomes one ``error:`` line, exit 2.

    Shared by ``sensibert`` and ``sensibert-deploy``: bugs still show tracebacks.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "out", None):  # every command's output path, checked before any work
            check_writable(args.out)
        return int(args.func(args) or 0)
    except SensibertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``sensibert-deploy`` CLI."""
    return dispatch(build_parser(), argv)


def _predict(args: argparse.Namespace) -> int:
    from deploy.predict import PredictConfig, Predictor, read_lines

    config = PredictConfig(precision=args.precision, batch_size=args.batch_size, threads=args.threads,
                           verify=not args.no_verify)
    lines = read_lines(args.input)
    predictor = Predictor(args.artifact, config)
    names = predictor.label_names
    table = args.format == "table"
    if table:
        print(f"{'line':>6}  answer (start-end, score)" if predictor.qa else
              f"{'line':>6}  {'label':<16} " + " ".join(f"{('p_' + n)[:12]:>12}" for n in names))
    skipped, truncated, done = [], [], 0
    for res in predictor.predict_lines(lines):
        if res.error is not None:
            skipped.append(res)
            log.warning(f"line {res.line}: {res.error}; skipped")
        else:
            done += 1
            if res.truncated:
                truncated.append(res.line)
        if table:
            if res.error is not None:
                print(f"{res.line:>6}  skipped: {res.error}")
            elif res.answer is not None:
                a = res.answer
                score = "none" if a["score"] is None else f"{a['score']:.3f}"
                print(f"{res.line:>6}  {a['text']!r} ({a['start']}-{a['end']}, {score})")
            else:
                probs = " ".join(f"{p:12.4f}" for p in res.probabilities)
                print(f"{res.line:>6}  {res.label[:16]:<16} {probs}{'  (truncated)' if res.truncated else ''}")
        else:
            print(json.dumps(res.to_dict(names), ensure_ascii=False))
        sys.stdout.flush()
    if truncated:
        shown = ", ".join(map(str, truncated[:10])) + (", …" if len(truncated) > 10 else "")
        log.warning(f"{len(truncated)} line(s) longer than max_length {predictor.manifest.max_length} tokens "
                    f"were truncated (lines {shown})")
    if skipped:
        log.warning(f"{len(skipped)} line(s) skipped, {done} {'answered' if predictor.qa else 'classified'}")
        return 1
    return 0


def _bench(args: argparse.Namespace) -> int:
    from deploy.measure import BenchConfig, format_result, measure, write_bench
    from deploy.profile import load_profile

    profile = load_profile(args.profile)
    if args.input:
        return _bench_lengths(args, profile)
    config = BenchConfig(precision=args.precision, seq_len=args.seq_len, batch=args.batch, runs=args.runs,
                         warmup=args.warmup, threads=args.threads, memory=not args.no_memory,
                         verify=not args.no_verify)
    result = measure(args.artifact, profile, config)  # warnings are in the table and the JSON
    if args.out:
        write_bench(result, args.out)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_result(result, profile.name))
    if args.out and not args.json:
        print(f"\nwrote {args.out}")
    return 0


_ops = run_ops


def _bench_lengths(args: argparse.Namespace, profile) -> int:
    from deploy.artifacts import write_json
    from deploy.lengths import DEFAULT_BUCKETS, LengthBenchConfig, format_lengths, measure_lengths
    from deploy.manifest import read_manifest, verify_files
    from deploy.predict import read_lines, usable_items

    config = LengthBenchConfig(precision=args.precision, threads=args.threads, max_inputs=args.max_inputs,
                               warmup=args.warmup, buckets=args.buckets or DEFAULT_BUCKETS,
                               pad_to_buckets=args.pad_to_buckets, batch=args.batch or 1)
    manifest = read_manifest(args.artifact, verify=False)
    if not args.no_verify:
        verify_files(manifest)
    items = usable_items(read_lines(args.input), manifest.task_kind, args.input)
    result = measure_lengths(manifest.folder, items, profile.runtime, config, source=args.input)
    if args.out:
        write_json(args.out, "sensibert.bench_lengths", 1, result.to_dict())
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_lengths(result))
    return 0


def _check(args: argparse.Namespace) -> int:
    from deploy.artifacts import write_json
    from deploy.measure import BenchConfig, check, format_check, format_result
    from deploy.profile import load_profile

    profile = load_profile(args.profile)
    report = check(args.artifact, profile, BenchConfig(precision=args.precision, runs=args.runs, warmup=args.warmup))
    if args.out:
        write_json(args.out, "sensibert.check", 1, report.to_dict())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_result(report.result, profile.name))
        print()
        print(format_check(report))
    return 0 if report.passed else 1


def _calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deploy.calibrate import DEFAULT_PROBE, CalibrateConfig, calibrate, write_calibrated_profile
    from deploy.profile import load_profile
    from deploy.session import session_settings

    profile = load_profile(args.profile)
    config = CalibrateConfig(probe=args.probe or DEFAULT_PROBE, threads=args.threads, runs=args.runs)
    for message in session_settings(profile.runtime, args.threads).warnings:
        log.warning(message)
    out = Path(args.out or f"{profile.id}.calibrated.yaml")
    table_request = _table_request(args) if args.latency_table else None  # settings checked before any timing
    calibration = calibrate(profile, config)
    table_path = None
    if table_request is not None:
        from deploy.latency_table import calibrate_table, table_path_for

        table_path = table_path_for(out)
        calibrate_table(profile, table_path, threads=args.threads, runs=args.table_runs, **table_request)
    write_calibrated_profile(profile, calibration, out, latency_table=table_path)
    print(f"probe {calibration.probe} with {calibration.threads} thread(s) on {calibration.measured_on}:")
    print(f"  fp32 {calibration.fp32_ms:.4f} ms   int8 {calibration.int8_ms:.4f} ms   "
          f"(onnxruntime {calibration.onnxruntime})")
    if table_path is not None:
        print(f"latency table {table_path}")
    print(f"wrote {out}; use it with: sensibert-deploy bench ARTIFACT --profile {out}")
    return 0


def _table_request(args: argparse.Namespace) -> dict:
    """Return the latency table's width, lengths and artifact from the flags; one line when bad."""
    def numbers(text: str, flag: str, count: int | None = None) -> list[int]:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            values = []
        if not values or any(v < 1 for v in values) or (count is not None and len(values) != count):
            raise InputError(f"{flag} {text!r} is not {count or 'some'} comma-separated whole numbers >= 1; "
                             f"e.g. {'384,32,1536' if count == 3 else '16,32,64,128'}")
        return values

    seq_lens = tuple(numbers(args.seq_lens, "--seq-lens")) if args.seq_lens else None
    if args.artifact and args.width:
        raise InputError("give --artifact or --width, not both: an artifact says its own width")
    width = tuple(numbers(args.width, "--width", 3)) if args.width else None
    if width is not None and width[0] % width[1]:
        raise InputError(f"--width {args.width}: hidden size {width[0]} is not a multiple of head size {width[1]}")
    for artifact in args.artifact or []:
        from deploy.manifest import read_manifest

        read_manifest(artifact, verify=False)
    return {"artifact": args.artifact, "width": width, "seq_lens": seq_lens}
