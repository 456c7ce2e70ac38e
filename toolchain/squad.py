"""SQuAD v1.1 for the toolchain: read the official JSON, carve disjoint splits, build training and
evaluation features over sliding windows, and score predictions with the official metric.

The windows come from :func:`deploy.qa.windows` and answers from :func:`deploy.qa.extract_answer`,
so training, evaluation here and inference on the device cut and read contexts the same way.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.qa import Window, extract_answer, squad_metrics, windows
from toolchain.data import carve_indices
from toolchain.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedTokenizerFast

CARVE_KEYS = ("article", "context", "question")


@dataclass(frozen=True)
class SquadExample:
    """One question over one paragraph, with every gold answer (the first one is trained on)."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


# ---------------------------------------------------------------- reading

def _fix() -> str:
    return "pass the official SQuAD v1.1 JSON (e.g. dev-v1.1.json)"


def _field(obj: Any, key: str, kind: type, where: str, path: Path) -> Any:
    """Return ``obj[key]`` when it has the expected type; the file is malformed otherwise."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise InputError(f"{path}: {where} has no {kind.__name__} field {key!r}; {_fix()}")
    return value


def _answer_problem(context: str, answers: list[Any]) -> str | None:
    """Return why the gold answers cannot be trained or scored on, or None when they are usable."""
    if not answers:
        return "no gold answers"
    for k, answer in enumerate(answers):
        text = answer.get("text") if isinstance(answer, dict) else None
        start = answer.get("answer_start") if isinstance(answer, dict) else None
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            return f"answer {k} lacks a text or an integer answer_start"
        if not text.strip():
            return f"answer {k} is empty"
        if context[start:start + len(text)] != text:
            return f"answer {k} {text!r} is not at offset {start} of the context"
    return None


def read_squad(path: Path) -> tuple[list[SquadExample], list[dict]]:
    """Return (examples, skipped) from a SQuAD v1.1 JSON file, in file order.

    A question whose gold answer text is not at its offset, or with no answer, is skipped and
    listed as {"id", "reason"}: one bad record should not cost the other ten thousand.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found; {_fix()}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); {_fix()}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise InputError(f"{path}: no 'data' list at the top level; {_fix()}")
    examples: list[SquadExample] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    for i, article in enumerate(data):
        title = _field(article, "title", str, f"data[{i}]", path)
        for j, paragraph in enumerate(_field(article, "paragraphs", list, f"data[{i}]", path)):
            where = f"data[{i}].paragraphs[{j}]"
            context = _field(paragraph, "context", str, where, path)
            for k, qa in enumerate(_field(paragraph, "qas", list, where, path)):
                qid = _field(qa, "id", str, f"{where}.qas[{k}]", path)
                question = _field(qa, "question", str, f"{where}.qas[{k}]", path)
                answers = _field(qa, "answers", list, f"{where}.qas[{k}]", path)
                reason = "duplicate id" if qid in seen else _answer_problem(context, answers)
                if reason is not None:
                    skipped.append({"id": qid, "reason": reason})
                    continue
                seen.add(qid)
                examples.append(SquadExample(
                    id=qid, title=title, context=context, question=question,
                    answers=tuple(a["text"] for a in answers),
                    answer_starts=tuple(int(a["answer_start"]) for a in answers)))
    return examples, skipped


# ---------------------------------------------------------------- carving

def carve_examples(examples: Sequence[SquadExample], by: str, eval_fraction: float, seed: int
                   ) -> tuple[list[SquadExample], list[SquadExample]]:
    """Return (train, eval) examples with no article, paragraph or question on both sides.

    Carving by article keeps every question about a topic on one side, so the eval split
    measures reading unseen text rather than recall of a paragraph seen in training.
    """
    if by not in CARVE_KEYS:
        raise InputError(f"--holdout-by {by!r}: squad has no such key; choose one of: {', '.join(CARVE_KEYS)}")
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float)) or not 0 < eval_fraction < 1:
        raise InputError(f"--eval-fraction {eval_fraction!r} is out of range; choose a fraction in (0, 1)")
    if by == "article":
        keys = [e.title for e in examples]
    elif by == "context":
        keys = [e.context for e in examples]
    else:
        keys = [e.id for e in examples]
    train, evaluation = carve_indices(keys, float(eval_fraction), seed)
    return [examples[i] for i in train], [examples[i] for i in evaluation]


# ---------------------------------------------------------------- features

def _backend(tokenizer: PreTrainedTokenizerFast) -> Any:
    """Return the tokenizers.Tokenizer behind a transformers fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; "
                         "load the model's tokenizer.json (use_fast=True)")
    return backend


def answer_tokens(window: Window, start_char: int, end_char: int) -> tuple[int, int] | None:
    """Return the (start, end) token indices of the character span [start_char, end_char) when the
    window holds all of it, else None.

    The span is trimmed of surrounding white space first; the start token is the first context
    token ending after start_char and the end token the last one starting before end_char.
    """
    context_tokens = [(t, off) for t, off in enumerate(window.offsets) if off is not None]
    if not context_tokens or end_char <= start_char:
        return None
    if context_tokens[0][1][0] > start_char or context_tokens[-1][1][1] < end_char:
        return None
    start = next((t for t, (_, e) in context_tokens if e > start_char), None)
    end = next((t for t, (s, _) in reversed(context_tokens) if s < end_char), None)
    if start is None or end is None or end < start:
        return None
    return start, end


def _gold_span(example: SquadExample) -> tuple[int, int]:
    """Return the character span of the first gold answer without surrounding white space."""
    text, start = example.answers[0], example.answer_starts[0]
    lead = len(text) - len(text.lstrip())
    return start + lead, start + len(text.rstrip())


def train_features(examples: Sequence[SquadExample], tokenizer: PreTrainedTokenizerFast, max_length: int,
                   doc_stride: int) -> tuple[dict[str, list], dict[str, int]]:
    """Return one training feature per window, with the token positions of the first gold answer.

    A window that does not hold the whole answer points both positions at [CLS] (token 0), as
    Hugging Face run_qa does; an example whose answer no window holds (it lies past the
    truncation) is counted in the stats, not fatal.
    """
    backend = _backend(tokenizer)
    return labelled_features(examples, [windows(backend, ex.question, ex.context, max_length, doc_stride)
                                        for ex in examples])


def labelled_features(examples: Sequence[SquadExample], windows_per_example: Sequence[Sequence[Window]]
                      ) -> tuple[dict[str, list], dict[str, int]]:
    """Return ``train_features`` of examples already cut into windows (e.g. by ``eval_features``)."""
    features: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "token_type_ids",
                                                 "start_positions", "end_positions")}
    without_answer = examples_without = 0
    for example, wins in zip(examples, windows_per_example):
        start_char, end_char = _gold_span(example)
        found = False
        for window in wins:
            span = answer_tokens(window, start_char, end_char)
            if span is None:
                without_answer += 1
                span = (0, 0)
            else:
                found = True
            features["input_ids"].append(window.input_ids)
            features["attention_mask"].append(window.attention_mask)
            features["token_type_ids"].append(window.token_type_ids)
            features["start_positions"].append(span[0])
            features["end_positions"].append(span[1])
        examples_without += not found
    stats = {"examples": len(examples), "features": len(features["input_ids"]),
             "windows_without_answer": without_answer, "examples_without_answer_window": examples_without}
    return features, stats


def eval_features(examples: Sequence[SquadExample], tokenizer: PreTrainedTokenizerFast, max_length: int,
                  doc_stride: int) -> tuple[dict[str, list], list[list[Window]]]:
    """Return one evaluation feature per window (with its ``example_index``) and each example's windows,
    which map the predicted token spans back to context text."""
    backend = _backend(tokenizer)
    features: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "token_type_ids", "example_index")}
    per_example: list[list[Window]] = []
    for index, example in enumerate(examples):
        wins = windows(backend, example.question, example.context, max_length, doc_stride)
        per_example.append(wins)
        for window in wins:
            features["input_ids"].append(window.input_ids)
            features["attention_mask"].append(window.attention_mask)
            features["token_type_ids"].append(window.token_type_ids)
            features["example_index"].append(index)
    return features, per_example


# ---------------------------------------------------------------- predictions and scores

def predict_answers(start_logits: np.ndarray, end_logits: np.ndarray, example_index: Sequence[int],
                    windows_per_example: Sequence[Sequence[Window]], examples: Sequence[SquadExample],
                    n_best: int = 20, max_answer_length: int = 30) -> dict[str, str]:
    """Return example id -> answer text from logit rows stacked in feature order (one per window)."""
    if not len(start_logits) == len(end_logits) == len(example_index):
        raise InputError(f"{len(example_index)} features but {len(start_logits)} start and {len(end_logits)} "
                         "end logit rows; pass one row of each per feature, in feature order")
    if len(windows_per_example) != len(examples):
        raise InputError(f"{len(examples)} examples but {len(windows_per_example)} window lists; "
                         "pass the window lists eval_features returned for these examples")
    rows: dict[int, list[int]] = defaultdict(list)
    for row, index in enumerate(example_index):
        rows[int(index)].append(row)
    stray = sorted(set(rows) - set(range(len(examples))))
    if stray:
        raise InputError(f"example_index {stray[0]} is out of range for {len(examples)} examples; "
                         "pass the example_index eval_features returned for these examples")
    predictions: dict[str, str] = {}
    for index, (example, wins) in enumerate(zip(examples, windows_per_example)):
        mine = rows.get(index, [])
        if len(mine) != len(wins):
            raise InputError(f"example {example.id}: {len(wins)} windows but {len(mine)} logit rows; "
                             "pass the logits of every feature eval_features returned")
        answer = extract_answer([start_logits[r] for r in mine], [end_logits[r] for r in mine], wins,
                                example.context, n_best=n_best, max_answer_length=max_answer_length)
        predictions[example.id] = answer["text"]
    return predictions


def squad_scores(predictions: Mapping[str, str], examples: Sequence[SquadExample]) -> dict[str, float]:
    """Return the official exact match and F1 (fractions in [0, 1]) of predictions over the examples."""
    return squad_metrics(predictions, {e.id: e.answers for e in examples})


def qa_scorer(qa: Any) -> Any:
    """Return the finetune Scorer of a QA task (``toolchain.data.QAEval``): F1 (primary) and exact
    match of the answers extracted from the eval windows' start and end logits."""
    from toolchain.finetune import Scorer

    def fn(predictions: Any, label_ids: Any) -> dict[str, float]:
        start, end = predictions[0], predictions[1]
        answers = predict_answers(start, end, qa.feature_example, qa.windows, qa.examples)
        scores = squad_scores(answers, qa.examples)
        return {"f1": scores["f1"], "exact_match": scores["exact_match"]}
    return Scorer("f1", fn)


__all__ = ["CARVE_KEYS", "qa_scorer", "SquadExample", "answer_tokens", "carve_examples", "eval_features", "labelled_features", "predict_answers",
           "read_squad", "squad_scores", "train_features"]
