"""Embedding benchmark (issue Step 8): the int8 artifact with and without int8 embedding tables.

Takes a trimmed (shrunk) SST-2 model — by default the Step 6 default-mode 50% model of
bench/accuracy_modes.py (teacher-first, seed 0) — exports it twice with the same settings
(fused, dynamic int8, per-channel, avx2 preset), once with ``quantize_embeddings`` off, and
scores both on the full SST-2 dev split through deploy/ (onnxruntime). Writes
bench/results/embeddings.json.

    OMP_NUM_THREADS=1 python bench/embeddings.py [--trimmed DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT = Path("/tmp/sensibert-bench-modes/sensitivity_teacher-k50-s0/trimmed")
OUT = ROOT / "bench" / "results" / "embeddings.json"
MIB = 2 ** 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trimmed", type=Path, default=DEFAULT, help="a shrunk model folder (sensibert shrink)")
    args = parser.parse_args()
    from deploy.artifacts import package_versions
    from toolchain.data import load_split
    from toolchain.export import ExportConfig, export
    from toolchain.pipeline import onnx_accuracy

    rows = load_split("sst2", "dev")[0]
    items, labels = list(rows["sentence"]), list(rows["label"])
    record = {"model": str(args.trimmed), "dev_rows": len(items), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for flag in (False, True):
            out = Path(tmp) / f"emb-{flag}"
            res = export(args.trimmed, out, ExportConfig(optimize=True, quantize="int8", task="sst2", seq_len=64,
                                                         quantize_embeddings=flag))
            row = {"quantize_embeddings": flag,
                   "int8_file_mib": round(res.sizes["model.int8.onnx"] / MIB, 2),
                   "fp32_file_mib": round(res.sizes["model.onnx"] / MIB, 2),
                   "int8_accuracy": onnx_accuracy(out, "int8", items, labels),
                   "fp32_accuracy": onnx_accuracy(out, "fp32", items, labels)}
            record["rows"].append(row)
            print(json.dumps(row), flush=True)
    off, on = record["rows"]
    record["accuracy_change_points"] = round(100 * (on["int8_accuracy"] - off["int8_accuracy"]), 2)
    record["package_versions"] = package_versions()
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
