"""Export-time cost of the per-model α choice (issue Step 12): `sensibert export` with the default
`dynamic-smooth` (four α quantised and checked on 1,000 held-out lines) against one α (`0.9`).

Both exports read the same model and the same calibration lines (SST-2 training sentences, the
first 1,200: 128 calibrate, the rest are held out), fused, int8, on one thread; the two runs
alternate, ``--rounds`` times, in one process, so a ratio is side by side. The default model is the
packaged MiniLM with a classifier head initialised at seed 0 (timing only: its labels mean
nothing); ``--model DIR`` takes any classifier directory. Writes bench/results/export_cost.json.

    OMP_NUM_THREADS=1 python bench/export_cost.py [--model DIR] [--rounds 2]
    python bench/export_cost.py --docs     # the table into docs/usage.md from the committed result
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import DOCS, RESULTS, add_table_flags, md_table, read_result, tables_mode, write_result  # noqa: E402

OUT = RESULTS / "export_cost.json"
DOC = DOCS / "usage.md"
LINES = 1200
RUNS = {"α chosen of 0.9, 0.65, 0.8, 1 (default)": (), "one α (`--int8-smooth-alpha 0.9`)": (0.9,)}


def table(record: dict) -> str:
    """Return the docs block: each run's export seconds per round, and the ratio of the medians."""
    median = {name: statistics.median(s) for name, s in record["seconds"].items()}
    (choice, t_choice), (one, t_one) = median.items()
    rows = [[name, " / ".join(f"{s:.1f}" for s in record["seconds"][name]), f"{median[name]:.1f}"] for name in median]
    return "\n".join(md_table(["export", "seconds per round", "median"], rows)
                     + ["", f"{record['model']}; {record['lines']} calibration lines ({record['held_out']} held out); "
                            f"one thread. The α choice costs {t_choice / t_one:.2f}× the one-α export "
                            f"(+{t_choice - t_one:.0f} s); it ships α {record['chosen']:g} here."])


def classifier(work: Path) -> Path:
    """The packaged MiniLM with a seed-0 classifier head, saved as a classifier directory."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from toolchain.models import resolve_model_dir

    source = resolve_model_dir(None)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(source), num_labels=2)
    model.save_pretrained(str(work / "clf"))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(work / "clf"))
    return work / "clf"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a classifier directory (default: MiniLM, seed-0 head)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each export")
    add_table_flags(parser, DOC)
    args = parser.parse_args()
    if tables_mode(args, DOC, lambda: {"table:export-cost": table(read_result(OUT))}):
        return 0
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    from deploy.artifacts import package_versions
    from toolchain.export import ExportConfig, export
    from toolchain.tasks import load_split

    lines = list(load_split("sst2", "train")[0]["sentence"])[:LINES]
    seconds: dict[str, list[float]] = {name: [] for name in RUNS}
    check: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or classifier(Path(tmp))
        for r in range(args.rounds):
            for name, alphas in RUNS.items():
                start = time.perf_counter()
                result = export(model, Path(tmp) / f"out-{r}-{len(alphas)}",
                                ExportConfig(optimize=True, quantize="int8", task="sst2", int8_smooth_alphas=alphas),
                                calibration=lines)
                seconds[name].append(round(time.perf_counter() - start, 2))
                print(f"{name}: {seconds[name][-1]} s", flush=True)
                check = result.int8.get("alpha_check") or check  # the default's, the run that chooses
    record = {"model": str(args.model) if args.model else "MiniLM (packaged), classifier head at seed 0",
              "lines": len(lines), "held_out": check["inputs"], "chosen": check["chosen"], "seconds": seconds,
              "package_versions": package_versions()}
    write_result(OUT, record)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
