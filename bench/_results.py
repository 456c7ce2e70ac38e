"""Shared by every benchmark script: result files, Markdown tables, and the docs pages' table blocks.

- ``write_result`` writes one result file atomically (a killed run leaves the committed one
  intact); ``read_result`` and ``read_results`` read the committed ones back.
- ``md_table`` formats a Markdown table (header, separator, one line per row; ``md_row`` one line).
- ``write_blocks`` replaces the text between ``<!-- NAME -->`` and ``<!-- /NAME -->`` markers of a
  page in docs/ (``NAME`` is ``table:speed``, ``goals``, ...), so that ``--docs`` regenerates a
  page's tables from the committed results and leaves its prose alone.
- ``add_table_flags`` and ``tables_mode`` give every script the same ``--table`` and ``--docs``.

Each script names the page that holds its tables (``DOC``) and returns its blocks by name from
``blocks()``: ``{"table:speed": ...}``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
if str(ROOT) not in sys.path:  # bench scripts run as files: make toolchain/ and deploy/ importable
    sys.path.insert(0, str(ROOT))


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, renamed when complete)."""
    from deploy.artifacts import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_result(path: str | Path, record: dict[str, Any], indent: int = 2) -> Path:
    """Write one benchmark result as JSON, atomically; return its path."""
    return write_text(path, json.dumps(record, indent=indent, default=str) + "\n")


def read_result(path: str | Path) -> dict[str, Any]:
    """Return one committed result file."""
    return json.loads(Path(path).read_text())


def read_results(folder: str | Path, pattern: str = "*.json") -> list[dict[str, Any]]:
    """Return every committed result file in ``folder`` matching ``pattern``, in file-name order."""
    return [read_result(p) for p in sorted(Path(folder).glob(pattern))]


def md_row(cells: Sequence[Any]) -> str:
    """Return one Markdown table line: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]] = ()) -> list[str]:
    """Return the lines of a Markdown table: the header, its separator, then one line per row."""
    return [md_row(header), "|" + "---|" * len(header), *(md_row(r) for r in rows)]


def replace_block(text: str, name: str, body: str, where: str = "text") -> str:
    """Return ``text`` with ``body`` between its ``<!-- name -->`` and ``<!-- /name -->`` markers."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.S)
    if not pattern.search(text):
        raise SystemExit(f"error: {where} has no {start} ... {end} markers; add them where the table belongs")
    block = f"{start}\n{body.rstrip(chr(10))}\n{end}"
    return pattern.sub(lambda _m: block, text, count=1)


def write_blocks(doc: str | Path, blocks: dict[str, str]) -> Path:
    """Replace each named block of the page ``doc`` (every marker pair must be there), atomically."""
    doc = Path(doc)
    text = doc.read_text()
    for name, body in blocks.items():
        text = replace_block(text, name, body, where=str(doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc))
    return write_text(doc, text)


def add_table_flags(parser: argparse.ArgumentParser, doc: Path) -> None:
    """Add every script's ``--table`` (print its tables) and ``--docs`` (write them into ``doc``) flags."""
    parser.add_argument("--table", action="store_true", help="print the Markdown tables from the committed results")
    parser.add_argument("--docs", action="store_true",
                        help=f"write the tables into {doc.relative_to(ROOT)} from the committed results")


def tables_mode(args: argparse.Namespace, doc: Path, blocks: Callable[[], dict[str, str]]) -> bool:
    """Print (``--table``) or write into ``doc`` (``--docs``) the script's named blocks; return whether
    either flag was given, so that ``main`` can stop there."""
    if not (args.table or args.docs):
        return False
    parts = blocks()
    if args.docs:
        write_blocks(doc, parts)
    else:
        sys.stdout.write("\n".join(body.rstrip("\n") + "\n" for body in parts.values()))
    return True

