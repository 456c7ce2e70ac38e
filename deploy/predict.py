"""Classify text lines (or answer questions) with an artifact: tokenizer.json + an ONNX model +
its manifest.

A QA artifact (task_kind ``qa``) reads JSON lines ``{"question": ..., "context": ...}``: each
context is cut into the windows the model was trained on (``deploy.qa.windows``, the manifest's
max_length and doc_stride) and the best span over all windows is returned with its character
offsets in the context and its score.

Bad lines (empty, not UTF-8, a pair line without its tab) are reported with their line number
and skipped; the other lines are still classified, in input order, batch by batch, so a
large file or a pipe streams.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, Union

from deploy.errors import DeployError, InputError
from deploy.manifest import Manifest, read_manifest

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer

log = logging.getLogger("deploy")
Text = Union[str, tuple[str, str]]
_PAD_TOKENS = ("[PAD]", "<pad>")
_INPUT_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32"}


def rows_per_call(precision: str, batch_size: int) -> int:
    """Return how many inputs one onnxruntime call of a ``precision`` file may hold. An int8 file
    computes its activation scales at run time over the whole call (dynamic quantisation): batched,
    one input's answer would depend on its batch-mates and their padding (one SQuAD file: F1 60.51
    one at a time, 59.63 in calls of 32; over many files the scores move either way, within noise),
    so it runs one input per call, as a device serving requests does, and pads nothing. fp32
    answers do not depend on the batch."""
    return 1 if precision == "int8" else batch_size


@dataclass(frozen=True)
class PredictConfig:
    """How to run: which model of the artifact, lines per batch, threads, whether to check hashes.
    An int8 file runs each input of a batch in its own call (``rows_per_call``)."""

    precision: str | None = None  # default: fp32 when present, else the artifact's only model
    batch_size: int = 16
    threads: int | None = None  # default: the CPUs this process may use
    verify: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch size must be a whole number ≥ 1, got {self.batch_size!r}")


@dataclass(frozen=True)
class LineResult:
    """One input line: its label and class probabilities, or why it was skipped."""

    line: int
    label: str | None = None
    probabilities: tuple[float, ...] | None = None
    truncated: bool = False
    error: str | None = None
    answer: dict[str, Any] | None = None  # qa: {"text", "start", "end", "score"}

    def to_dict(self, label_names: Sequence[str]) -> dict[str, Any]:
        if self.error is not None:
            return {"line": self.line, "error": self.error}
        if self.answer is not None:
            return {"line": self.line, "answer": self.answer["text"], "start": self.answer["start"],
                    "end": self.answer["end"], "score": self.answer["score"], "windows": self.answer["windows"]}
        probs = {name: round(p, 6) for name, p in zip(label_names, self.probabilities or ())}
        return {"line": self.line, "label": self.label, "probabilities": probs, "truncated": self.truncated}


# ---------------------------------------------------------------- tokenisation shared with measure


def load_tokenizer(manifest: Manifest) -> Tokenizer:
    """Return the artifact's tokenizer, truncating to its max_length and never padding by itself."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(manifest.tokenizer_path))
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        raise DeployError(f"{manifest.tokenizer_path}: tokenizers could not read it ({exc}); "
                          "re-export the artifact") from None
    tokenizer.no_padding()
    tokenizer.enable_truncation(manifest.max_length)
    return tokenizer


def pad_id(tokenizer: Tokenizer) -> int:
    """Return the tokenizer's padding id ([PAD] / <pad>; 0 where it names none)."""
    if tokenizer.padding and tokenizer.padding.get("pad_id") is not None:
        return int(tokenizer.padding["pad_id"])
    for token in _PAD_TOKENS:
        idx = tokenizer.token_to_id(token)
        if idx is not None:
            return idx
    return 0


BENCH_TEXT = ("the film opens on a quiet river city where nothing much happens until a stranger "
              "arrives with a question nobody wants to answer . the actors are very good and the "
              "story moves fast , but the plot is not always clear and some scenes feel dull . "
              "it was a brilliant idea to keep the camera close ; what did the director want us "
              "to feel when the capital finally burns ? love it or hate it , this is not a boring "
              "movie , and the best moments are among the year's most fun").split()


def encode(tokenizer: Tokenizer, items: Sequence[Text], pad_to: int | None = None
           ) -> tuple[dict[str, np.ndarray], list[bool]]:
    """Return (input_ids, attention_mask, token_type_ids as int64 [B, L], truncated flag per item).

    Rows are padded to the longest row, or to ``pad_to`` for fixed-shape benchmarks.
    """
    import numpy as np

    encodings = tokenizer.encode_batch(list(items))
    width = pad_to or max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id(tokenizer), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    types = np.zeros((len(encodings), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = min(len(enc.ids), width)
        ids[row, :n], mask[row, :n], types[row, :n] = enc.ids[:n], enc.attention_mask[:n], enc.type_ids[:n]
    truncated = [bool(e.overflowing) for e in encodings]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, truncated


def bench_inputs(tokenizer, task_kind: str, batch: int, seq_len: int) -> dict[str, Any]:
    """Return token arrays of exactly [batch, seq_len] from fixed text (each row a different span)."""
    words = BENCH_TEXT * (seq_len // len(BENCH_TEXT) + 2)  # at least one token per word: enough to fill
    items: list = []
    for row in range(batch):
        shift = (row * 7) % len(BENCH_TEXT)
        text = " ".join(words[shift:] + words[:shift])
        if task_kind in ("pair", "qa"):  # qa: a question and its context
            other = len(BENCH_TEXT) // 2
            items.append((text, " ".join(words[other:] + words[:other])))
        else:
            items.append(text)
    tokenizer.enable_truncation(seq_len)
    try:
        arrays, _ = encode(tokenizer, items, pad_to=seq_len)
    finally:
        tokenizer.no_truncation()
    return arrays


def session_feed(session, arrays: dict[str, np.ndarray], where: str = "model") -> dict[str, np.ndarray]:
    """Return the arrays the session's inputs ask for, in their integer type."""
    feed = {}
    for spec in session.get_inputs():
        if spec.name not in arrays:
            raise DeployError(f"{where}: unexpected model input {spec.name!r}; the runner feeds "
                              f"{', '.join(arrays)} (export the model with those inputs)")
        dtype = _INPUT_DTYPES.get(spec.type)
        if dtype is None:
            raise DeployError(f"{where}: input {spec.name!r} has type {spec.type}; expected int64 or int32 token ids")
        feed[spec.name] = arrays[spec.name].astype(dtype, copy=False)
    return feed


def softmax(logits: np.ndarray) -> np.ndarray:
    """Return row-wise softmax in float64 (stable: the row maximum is subtracted first)."""
    import numpy as np

    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------- the predictor


class Predictor:
    """An artifact opened for inference: manifest, tokenizer and one session."""

    def __init__(self, artifact: str | os.PathLike | Manifest, config: PredictConfig = PredictConfig()):
        from deploy.session import open_session

        self.manifest = artifact if isinstance(artifact, Manifest) else read_manifest(artifact, verify=config.verify)
        self.precision = config.precision or self.manifest.default_precision()
        self.model_path = self.manifest.runnable_model(self.precision)
        self.tokenizer = load_tokenizer(self.manifest)
        self.session = open_session(self.model_path, None, config.threads)
        outputs = [o.name for o in self.session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]
        self.config = config
        self.qa = self.manifest.task_kind == "qa"
        if self.qa and not {"start_logits", "end_logits"} <= set(outputs):
            raise DeployError(f"{self.model_path}: a QA artifact needs start_logits and end_logits outputs, found "
                              f"{', '.join(outputs)}; re-export the artifact")
        stride = self.manifest.extra.get("doc_stride")
        from deploy.qa import default_doc_stride

        self.doc_stride = int(stride) if isinstance(stride, int) else default_doc_stride(self.manifest.max_length)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.manifest.label_names

    @property
    def rows_per_call(self) -> int:
        return rows_per_call(self.precision, self.config.batch_size)

    def probabilities(self, items: Sequence[Text]) -> tuple[np.ndarray, list[bool]]:
        """Return class probabilities [B, C] for texts (pairs for a pair task) and truncation flags."""
        import numpy as np

        if self.qa:
            raise DeployError(f"{self.manifest.folder}: a question-answering artifact gives answers, not class "
                              "probabilities; call answers() (or predict with JSON lines)")
        probs, truncated = [], []
        size = self.rows_per_call
        for first in range(0, len(items), size):
            arrays, cut = encode(self.tokenizer, items[first:first + size])
            logits = self.session.run([self._output], session_feed(self.session, arrays, str(self.model_path)))[0]
            if logits.ndim != 2 or logits.shape[1] != len(self.label_names):
                raise DeployError(f"{self.model_path}: output {self._output!r} has shape {list(logits.shape)} but "
                                  f"the manifest names {len(self.label_names)} labels; re-export the artifact")
            probs.append(softmax(logits))
            truncated += cut
        return (np.concatenate(probs) if probs else np.zeros((0, len(self.label_names)))), truncated

    def answers(self, pairs: Sequence[tuple[str, str]], n_best: int = 20, max_answer_length: int = 30,
                progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """Return the best answer span of each (question, context): {"text", "start", "end",
        "score", "windows"}; a question that cannot be windowed raises InputError. ``progress``
        is called with (batches done, batches in all) after each onnxruntime call."""
        return self._answer([c for _, c in pairs], [self.windows(q, c) for q, c in pairs], n_best, max_answer_length,
                            progress)

    def windows(self, question: str, context: str) -> list[Any]:
        """Return the model's windows over one question and context (the manifest's length and stride)."""
        from deploy.qa import windows

        return windows(self.tokenizer, question, context, self.manifest.max_length, self.doc_stride)

    def _answer(self, contexts: Sequence[str], per_item: Sequence[Sequence[Any]], n_best: int = 20,
                max_answer_length: int = 30,
                progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """Return the best span of each context from its windows, run in batches of windows."""
        import numpy as np

        from deploy.qa import extract_answer

        flat = [(i, w) for i, wins in enumerate(per_item) for w in wins]
        starts: list[Any] = [None] * len(flat)
        ends: list[Any] = [None] * len(flat)
        pad = pad_id(self.tokenizer)
        size = self.rows_per_call
        for first in range(0, len(flat), size):
            chunk = [w for _, w in flat[first:first + size]]
            width = max(len(w.input_ids) for w in chunk)
            arrays = {name: np.full((len(chunk), width), pad if name == "input_ids" else 0, dtype=np.int64)
                      for name in ("input_ids", "attention_mask", "token_type_ids")}
            for row, w in enumerate(chunk):
                n = len(w.input_ids)
                arrays["input_ids"][row, :n] = w.input_ids
                arrays["attention_mask"][row, :n] = w.attention_mask
                arrays["token_type_ids"][row, :n] = w.token_type_ids
            start, end = self.session.run(["start_logits", "end_logits"],
                                          session_feed(self.session, arrays, str(self.model_path)))
            for row in range(len(chunk)):
                starts[first + row], ends[first + row] = start[row], end[row]
            if progress is not None:
                progress(first // size + 1, -(-len(flat) // size))
        out = []
        cursor = 0
        for context, wins in zip(contexts, per_item):
            rows = range(cursor, cursor + len(wins))
            cursor += len(wins)
            answer = extract_answer([starts[r] for r in rows], [ends[r] for r in rows], wins, context,
                                    n_best=n_best, max_answer_length=max_answer_length)
            out.append({**answer, "windows": len(wins)})
        return out

    def predict_lines(self, lines: Iterable[bytes | str], start: int = 1) -> Iterator[LineResult]:
        """Yield one LineResult per input line, in order; bad lines carry an error, not a guess."""
        pending: list[tuple[int, Text | None, str | None]] = []
        batch_items = 0
        for number, raw in enumerate(lines, start):
            item, error = parse_line(raw, self.manifest.task_kind, first=number == start)
            pending.append((number, item, error))
            batch_items += error is None
            if batch_items >= self.config.batch_size:
                yield from self._flush(pending)
                pending, batch_items = [], 0
        yield from self._flush(pending)

    def _flush(self, pending: list[tuple[int, Text | None, str | None]]) -> Iterator[LineResult]:
        good = [(n, item) for n, item, err in pending if err is None]
        results = {}
        if good and self.qa:
            ok = []
            for n, (question, context) in good:  # a question too long for the window: that line's error
                try:
                    ok.append((n, context, self.windows(question, context)))
                except InputError as exc:
                    results[n] = LineResult(line=n, error=str(exc))
            answers = self._answer([c for _, c, _ in ok], [w for _, _, w in ok]) if ok else []
            for (n, _, _), answer in zip(ok, answers):
                results[n] = LineResult(line=n, answer=answer)
        elif good:
            probs, truncated = self.probabilities([item for _, item in good])
            for (n, _), row, cut in zip(good, probs, truncated):
                results[n] = LineResult(line=n, label=self.label_names[int(row.argmax())],
                                        probabilities=tuple(float(p) for p in row), truncated=cut)
        for n, _, err in pending:
            yield results[n] if n in results else LineResult(line=n, error=err)


def parse_line(raw: bytes | str, task_kind: str, first: bool = False) -> tuple[Text | None, str | None]:
    """Return (text or (text_a, text_b), None) or (None, reason the line is skipped)."""
    if isinstance(raw, bytes):
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, (f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}); "
                          "re-encode the file as UTF-8")
    else:
        text = raw.rstrip("\n").rstrip("\r")
    if first:
        text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark
    if not text.strip():
        return None, "empty line"
    if task_kind == "qa":
        return _parse_qa(text)
    if task_kind == "pair":
        parts = text.split("\t")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            return None, (f"a pair task needs two non-empty texts separated by one tab, "
                          f"found {len(parts)} field(s)")
        return (parts[0], parts[1]), None
    return text, None


def usable_items(lines: Iterable[bytes | str], task_kind: str, source: str) -> list[Text]:
    """Return the inputs of ``lines`` that ``parse_line`` accepts (others are dropped); a source
    with none is one error line naming the format it needs."""
    items = []
    for i, raw in enumerate(lines):
        item, _ = parse_line(raw, task_kind, first=i == 0)
        if item is not None:
            items.append(item)
    if not items:
        need = {"pair": "two texts separated by a tab", "qa": 'one JSON object {"question": ..., "context": ...}'}
        raise InputError(f"{source}: no usable input line; write {need.get(task_kind, 'one text')} per line "
                         "(UTF-8)")
    return items


def _parse_qa(text: str) -> tuple[tuple[str, str] | None, str | None]:
    """Return ((question, context), None) from a JSON line, or (None, why it is skipped)."""
    import json

    try:
        body = json.loads(text)
    except ValueError as exc:
        return None, f"not a JSON object ({exc}); write one {{\"question\": ..., \"context\": ...}} per line"
    if not isinstance(body, dict):
        return None, 'not a JSON object; write one {"question": ..., "context": ...} per line'
    for key in ("question", "context"):
        if not isinstance(body.get(key), str) or not body[key].strip():
            return None, f'no non-empty "{key}" string; write one {{"question": ..., "context": ...}} per line'
    return (body["question"], body["context"]), None


def predict(artifact: str | os.PathLike | Manifest, lines: Iterable[bytes | str],
            config: PredictConfig = PredictConfig()) -> list[LineResult]:
    """Return a LineResult per line of ``lines`` (bytes are decoded as UTF-8, strictly).

    Example:
        >>> [r.label for r in predict("out/sst2-rpi4", ["a great movie", "dull"])]
    """
    return list(Predictor(artifact, config).predict_lines(lines))


def read_lines(source: str | os.PathLike) -> Iterator[bytes]:
    """Return the raw lines of a file, or of standard input for ``-``; decoding is the caller's."""
    import sys

    if str(source) == "-":
        return iter(sys.stdin.buffer)
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: input file not found; pass a text file with one input per line, or - for stdin")
    return _file_lines(path)


def _file_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from fh
