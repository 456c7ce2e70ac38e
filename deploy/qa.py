"""Extractive question answering on the device: the SQuAD v1.1 metric, sliding windows over a long
context, and answer-span extraction from start/end logits.

Device side: numpy, tokenizers and the standard library only, and Python 3.9 at runtime. The
toolchain builds its training and evaluation features with the same :func:`windows`, so the
windows a model is trained on are the windows it is scored on.
"""

from __future__ import annotations

import re
import string
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy.errors import InputError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# ---------------------------------------------------------------- the SQuAD v1.1 metric
# The official evaluate-v1.1.py, function for function, so scores compare with published ones.

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse white space (official order)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _f1_one(prediction: str, gold: str) -> float:
    """Token F1 of one prediction against one gold answer (0 without a common token)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return max((1.0 if pred == normalize_answer(g) else 0.0 for g in golds), default=0.0)


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """The best token F1 of the prediction over the gold answers."""
    return max((_f1_one(prediction, g) for g in golds), default=0.0)


def squad_metrics(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Return exact match and F1 as fractions in [0, 1], averaged over the ids of ``golds``.

    An id without a prediction scores 0, as in the official script ("unanswered question").
    """
    if not golds:
        raise InputError("no questions to score; pass at least one question with gold answers")
    em = f1 = 0.0
    for qid, answers in golds.items():
        if isinstance(answers, str):
            answers = [answers]
        prediction = predictions.get(qid, "")
        em += exact_match(prediction, answers)
        f1 += f1_score(prediction, answers)
    n = len(golds)
    return {"exact_match": em / n, "f1": f1 / n, "count": n}


# ---------------------------------------------------------------- sliding windows

@dataclass(frozen=True)
class Window:
    """One model input over a question and a slice of its context.

    ``offsets`` holds the character span in the context for context tokens and None for
    question, special and padding tokens, so a predicted token span maps back to context text.
    """

    input_ids: list[int]
    attention_mask: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]
    index: int


_CACHE_SIZE = 8
# key -> (the caller's tokenizer, kept alive so its id is not reused; counting copy; windowing copy)
_copies: OrderedDict[tuple[int, int, int], tuple[Any, Any, Any]] = OrderedDict()


def _tokenizer_copies(tokenizer: Tokenizer, max_length: int, doc_stride: int) -> tuple[Any, Any]:
    """Return (counting, windowing) copies of ``tokenizer``; the caller's settings stay untouched.

    The cache holds the original too: while an entry lives its id cannot name another tokenizer.
    """
    key = (id(tokenizer), max_length, doc_stride)
    entry = _copies.get(key)
    if entry is not None and entry[0] is tokenizer:
        _copies.move_to_end(key)
        return entry[1], entry[2]
    from tokenizers import Tokenizer as _Tokenizer

    serialised = tokenizer.to_str()
    counter = _Tokenizer.from_str(serialised)
    counter.no_truncation()
    counter.no_padding()
    windower = _Tokenizer.from_str(serialised)
    windower.enable_truncation(max_length, stride=doc_stride, strategy="only_second")
    windower.no_padding()
    _copies[key] = (tokenizer, counter, windower)
    _copies.move_to_end(key)
    while len(_copies) > _CACHE_SIZE:
        _copies.popitem(last=False)
    return counter, windower


def _too_long(n: int, max_length: int) -> InputError:
    return InputError(f"question has {n} tokens, too long for --max-length {max_length}; "
                      "raise --max-length or shorten the question")


DEFAULT_DOC_STRIDE = 128


def default_doc_stride(max_length: int) -> int:
    """Return the window overlap used when none is given: 128 tokens (Hugging Face run_qa's), at
    most half the window so that each window still brings new context."""
    return min(DEFAULT_DOC_STRIDE, max_length // 2)


def windows(tokenizer: Tokenizer, question: str, context: str, max_length: int, doc_stride: int) -> list[Window]:
    """Return the windows over ``question`` + ``context``: the question whole in each, the context cut
    into slices of at most ``max_length`` tokens in all, consecutive slices sharing ``doc_stride``
    context tokens (Hugging Face run_qa's ``stride``). Unpadded: callers pad per batch.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8:
        raise InputError(f"--max-length {max_length!r} is too small for question answering; choose at least 8 tokens")
    if isinstance(doc_stride, bool) or not isinstance(doc_stride, int) or not 0 <= doc_stride < max_length:
        raise InputError(f"--doc-stride {doc_stride!r} is out of range; choose a whole number in [0, {max_length})")
    counter, windower = _tokenizer_copies(tokenizer, max_length, doc_stride)
    n_question = len(counter.encode(question, add_special_tokens=False).ids)
    room = max_length - n_question - windower.num_special_tokens_to_add(True)
    if room < 1:
        raise _too_long(n_question, max_length)
    if doc_stride >= room:
        # tokenizers panics here (a PanicException, not an Exception) rather than raising
        raise InputError(f"--doc-stride {doc_stride} leaves no new context per window: a {n_question}-token "
                         f"question leaves {room} context tokens in --max-length {max_length}; "
                         "lower --doc-stride or raise --max-length")
    try:
        encoding = windower.encode(question, context)
    except Exception as exc:  # "Truncation error: sequence to truncate too short"
        raise _too_long(n_question, max_length) from exc
    out = []
    for index, enc in enumerate([encoding] + list(encoding.overflowing)):
        offsets = [tuple(off) if seq == 1 else None for off, seq in zip(enc.offsets, enc.sequence_ids)]
        out.append(Window(input_ids=list(enc.ids), attention_mask=list(enc.attention_mask),
                          token_type_ids=list(enc.type_ids), offsets=offsets, index=index))
    return out


# ---------------------------------------------------------------- answer extraction

def _window_candidates(start: np.ndarray, end: np.ndarray, window: Window, n_best: int,
                       max_answer_length: int) -> list[tuple[float, int, int]]:
    """Return (score, start token, end token) of the valid spans among the top start and end logits."""
    n = len(window.offsets)
    start = np.asarray(start, dtype=np.float64).reshape(-1)
    end = np.asarray(end, dtype=np.float64).reshape(-1)
    if start.shape[0] < n or end.shape[0] < n:
        raise InputError(f"window {window.index} has {n} tokens but {min(start.shape[0], end.shape[0])} logits; "
                         "pass the logits of the batch that held this window")
    in_context = np.array([o is not None for o in window.offsets], dtype=bool)
    return span_candidates(start[:n], end[:n], in_context, n_best, max_answer_length)


def span_candidates(start: np.ndarray, end: np.ndarray, in_context: np.ndarray, n_best: int = 20,
                    max_answer_length: int = 30) -> list[tuple[float, int, int]]:
    """Return (score, start token, end token) of every valid span among the ``n_best`` highest start
    and end logits of one window: both tokens in the context (``in_context``), end not before start,
    at most ``max_answer_length`` tokens; score = start + end logit. The one rule that turns logits
    into an answer, shared by answer extraction and the export's int8 choice."""
    start = np.asarray(start, dtype=np.float64).reshape(-1)
    end = np.asarray(end, dtype=np.float64).reshape(-1)
    s_idx = np.argsort(-start, kind="stable")[:n_best]
    e_idx = np.argsort(-end, kind="stable")[:n_best]
    s_grid, e_grid = s_idx[:, None], e_idx[None, :]
    valid = (in_context[s_grid] & in_context[e_grid] & (e_grid >= s_grid)
             & (e_grid - s_grid + 1 <= max_answer_length))
    rows, cols = np.nonzero(valid)
    scores = start[s_idx[rows]] + end[e_idx[cols]]
    return [(float(sc), int(s_idx[r]), int(e_idx[c])) for sc, r, c in zip(scores.tolist(), rows, cols)]


def nbest_answers(start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray],
                  windows: Sequence[Window], context: str, n_best: int = 20,
                  max_answer_length: int = 30) -> list[dict]:
    """Return up to ``n_best`` distinct answer spans of one example over all its windows, best first.

    A span seen in two overlapping windows is listed once, with its better score.
    """
    if not isinstance(n_best, int) or n_best < 1:
        raise InputError(f"n_best {n_best!r} is out of range; choose a whole number of at least 1")
    if not isinstance(max_answer_length, int) or max_answer_length < 1:
        raise InputError(f"--max-answer-length {max_answer_length!r} is out of range; choose at least 1 token")
    if not len(start_logits) == len(end_logits) == len(windows):
        raise InputError(f"{len(windows)} windows but {len(start_logits)} start and {len(end_logits)} end logit "
                         "rows; pass one row of each per window")
    best: dict[tuple[int, int], dict] = {}
    for start, end, window in zip(start_logits, end_logits, windows):
        for score, s, e in _window_candidates(start, end, window, n_best, max_answer_length):
            start_char = window.offsets[s][0]
            end_char = window.offsets[e][1]
            known = best.get((start_char, end_char))
            if known is None or score > known["score"]:
                best[(start_char, end_char)] = {"text": context[start_char:end_char], "start": start_char,
                                                "end": end_char, "score": score}
    # sorted() is stable: equal scores keep the order found (earlier window, higher logits first)
    return sorted(best.values(), key=lambda a: -a["score"])[:n_best]


def extract_answer(start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray],
                   windows: Sequence[Window], context: str, n_best: int = 20,
                   max_answer_length: int = 30) -> dict:
    """Return the best answer span of one example as {"text", "start", "end", "score"}.

    Candidates: the ``n_best`` highest start and end logits of each window, both in the context,
    end not before start, at most ``max_answer_length`` tokens; score = start + end logit. With
    no valid span the answer is empty and the score None (JSON-safe, unlike -inf).
    """
    ranked = nbest_answers(start_logits, end_logits, windows, context, n_best, max_answer_length)
    if not ranked:
        return {"text": "", "start": 0, "end": 0, "score": None}
    return ranked[0]


__all__ = ["DEFAULT_DOC_STRIDE", "Window", "default_doc_stride", "exact_match", "extract_answer", "f1_score", "nbest_answers", "normalize_answer",
           "span_candidates", "squad_metrics", "windows"]
