"""Embedding benchmark (issue Step 8): the int8 artifact with and without int8 embedding tables,
and with the vocabulary trimmed to SST-2's training texts (``--vocab task``).

Takes a trimmed (shrunk) SST-2 model — by default the Step 6 default-mode 50% model of
bench/accuracy_modes.py (teacher-first, seed 0) — exports it twice with the same settings
(fused, dynamic int8, per-channel, avx2 preset), once with ``quantize_embeddings`` off, and
scores both on the full SST-2 dev split through deploy/ (onnxruntime); then trims the vocabulary
to the pieces of the whole SST-2 training split and exports it with int8 embeddings. Writes
bench/results/embeddings.json.

    OMP_NUM_THREADS=1 python bench/embeddings.py [--trimmed DIR]
    python bench/embeddings.py --docs     # the table into docs/memory.md from the committed result
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import DOCS, RESULTS, add_table_flags, md_table, read_result, tables_mode, write_result  # noqa: E402

DEFAULT = Path("/tmp/sensibert-bench-modes/sensitivity_teacher-k50-s0/trimmed")
OUT = RESULTS / "embeddings.json"
DOC = DOCS / "memory.md"
MIB = 2 ** 20


def table(record: dict) -> str:
    """Return the docs block of a result: one row per artifact variant, then the goals."""
    rows = []
    for r in record["rows"]:
        name = "int8 embeddings (default)" if r["quantize_embeddings"] else "fp32 embeddings"
        if r.get("vocab") == "task":
            name = "int8 embeddings + `--vocab task`"
        vocab = (f"{r['vocab_after']:,} of {r['vocab_before']:,} pieces; {r['eval_texts_changed']:.1%} of dev "
                 f"texts tokenised differently, [UNK] {r['eval_unk_after']:.2%}") if r.get("vocab") else "full"
        rows.append([name, vocab, f"{r['int8_file_mib']} MiB", f"{r['fp32_file_mib']} MiB",
                     f"{100 * r['int8_accuracy']:.2f}%", f"{100 * r['fp32_accuracy']:.2f}%"])
    on = record["rows"][1]
    change = record["accuracy_change_points"]
    lines = md_table(["variant", "vocabulary", "int8 file", "fp32 file", "int8 dev accuracy", "fp32 dev accuracy"], rows)
    lines += ["", f"Goal ≤ 20 MiB at 50% without vocabulary trimming: **{'met' if on['int8_file_mib'] <= 20 else 'missed'}** "
              f"({on['int8_file_mib']} MiB). Goal ≤ 0.3 points accuracy change from quantising the embeddings: "
              + ("**met**" if abs(change) <= 0.3 else "**missed in size, not in direction**")
              + f" ({change:+.2f} points, {record['dev_rows']} dev sentences; one model, one seed)."]
    return "\n".join(lines)



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trimmed", type=Path, default=DEFAULT, help="a shrunk model folder (sensibert shrink)")
    add_table_flags(parser, DOC)
    args = parser.parse_args()
    if tables_mode(args, DOC, lambda: {"table:embeddings": table(read_result(OUT))}):
        return 0
    from deploy.artifacts import package_versions
    from toolchain.tasks import load_split
    from toolchain.export import ExportConfig, export
    from toolchain.pipeline import onnx_accuracy

    rows = load_split("sst2", "dev")[0]
    items, labels = list(rows["sentence"]), list(rows["label"])
    record = {"model": str(args.trimmed), "dev_rows": len(items), "rows": []}
    def row(source: Path, out: Path, quantize_embeddings: bool, **extra) -> None:
        res = export(source, out, ExportConfig(optimize=True, quantize="int8", task="sst2", seq_len=64,
                                               quantize_embeddings=quantize_embeddings))
        body = {"quantize_embeddings": quantize_embeddings, **extra,
                "int8_file_mib": round(res.sizes["model.int8.onnx"] / MIB, 2),
                "fp32_file_mib": round(res.sizes["model.onnx"] / MIB, 2),
                "int8_accuracy": onnx_accuracy(out, "int8", items, labels),
                "fp32_accuracy": onnx_accuracy(out, "fp32", items, labels)}
        record["rows"].append(body)
        print(json.dumps(body), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for flag in (False, True):
            row(args.trimmed, Path(tmp) / f"emb-{flag}", flag)
        from toolchain.vocab import trim_vocab

        train = list(load_split("sst2", "train")[0]["sentence"])
        vocab = trim_vocab(args.trimmed, Path(tmp) / "vocab", train, items)
        row(Path(tmp) / "vocab", Path(tmp) / "emb-vocab", True, vocab="task",
            **{k: v for k, v in vocab.to_dict().items() if k != "out_dir"})
    off, on = record["rows"][:2]
    record["accuracy_change_points"] = round(100 * (on["int8_accuracy"] - off["int8_accuracy"]), 2)
    record["package_versions"] = package_versions()
    write_result(OUT, record)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
