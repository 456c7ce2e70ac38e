"""Device-side question answering: the official SQuAD v1.1 metric on hand-checked cases, sliding
windows from the real MiniLM tokenizer (overlap, coverage, offsets, limits) and answer-span
extraction, including an answer cut by one window's end and whole in the next."""

from __future__ import annotations


import numpy as np
import pytest

from deploy.errors import InputError
from deploy.qa import (
    Window,
    exact_match,
    extract_answer,
    f1_score,
    nbest_answers,
    normalize_answer,
    squad_metrics,
    windows,
)

QUESTION = "Where was the treasure of the old king hidden?"
FILLER = ("The river runs past the mill and the farms before it reaches the harbour town where "
          "boats wait for the tide. ")


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    """The packaged MiniLM's tokenizers.Tokenizer, as the device loads it from tokenizer.json."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def plain(tokenizer):
    """An untruncated, unpadded copy, to tokenise a context alone as the reference."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def _context_span(window: Window) -> list[tuple[int, int]]:
    return [o for o in window.offsets if o is not None]


# ---------------------------------------------------------------- metric

def test_normalize_answer_case_punctuation_articles_and_space():
    assert normalize_answer("  The  Big, RED dog!  ") == "big red dog"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theater anthem") == "theater anthem"   # articles only as whole words
    assert normalize_answer("Denver\tBroncos\n") == "denver broncos"
    assert normalize_answer("the") == ""
    # punctuation goes before articles: "the-end" -> "theend" keeps no article to remove
    assert normalize_answer("the-end") == "theend"


def test_exact_match_takes_the_best_gold_answer():
    assert exact_match("Paris", ["the city of Paris", "paris."]) == 1.0   # only the second gold matches
    assert exact_match("The Denver Broncos", ["Denver Broncos"]) == 1.0
    assert exact_match("Broncos", ["Denver Broncos"]) == 0.0
    assert exact_match("", ["Denver Broncos"]) == 0.0


def test_f1_by_hand():
    # "the big red dog" -> [big, red, dog]; gold [red, dog]: P = 2/3, R = 1, F1 = 2PR/(P+R) = 0.8
    assert f1_score("the big red dog", ["red dog"]) == pytest.approx(0.8)
    assert f1_score("red cat", ["red dog"]) == pytest.approx(0.5)           # P = R = 1/2
    assert f1_score("dog dog", ["dog"]) == pytest.approx(2 / 3)             # counts clip: P = 1/2, R = 1
    assert f1_score("red dog", ["cat", "big red dog"]) == pytest.approx(0.8)  # max over golds: P=1, R=2/3
    assert f1_score("blue whale", ["red dog"]) == 0.0
    assert f1_score("", ["Denver Broncos"]) == 0.0
    assert f1_score("Denver Broncos!", ["denver broncos"]) == 1.0


def test_squad_metrics_averages_over_golds_and_scores_a_missing_id_zero():
    golds = {"q1": ["Denver Broncos"], "q2": ["red dog"], "q3": ["Santa Clara"]}
    predictions = {"q1": "the Denver Broncos", "q2": "the big red dog", "stray": "ignored"}
    scores = squad_metrics(predictions, golds)
    assert scores["count"] == 3
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)
    assert 0.0 <= scores["exact_match"] <= scores["f1"] <= 1.0
    with pytest.raises(InputError, match="no questions to score"):
        squad_metrics({}, {})


# ---------------------------------------------------------------- windows

@pytest.mark.parametrize("max_length,stride", [(32, 8), (32, 0), (48, 16), (24, 5)])
def test_windows_overlap_by_stride_and_cover_the_context(tokenizer, plain, max_length, stride):
    context = FILLER * 6
    reference = plain.encode(context, add_special_tokens=False).offsets
    question_ids = plain.encode(QUESTION, add_special_tokens=False).ids
    wins = windows(tokenizer, QUESTION, context, max_length, stride)
    assert len(wins) > 2
    positions = []
    for k, w in enumerate(wins):
        assert w.index == k
        assert len(w.input_ids) == len(w.attention_mask) == len(w.token_type_ids) == len(w.offsets)
        assert len(w.input_ids) <= max_length and set(w.attention_mask) == {1}
        assert w.input_ids[1:1 + len(question_ids)] == question_ids       # [CLS] question [SEP] ...
        assert all(w.token_type_ids[t] == 1 for t, o in enumerate(w.offsets) if o is not None)
        span = _context_span(w)
        first = reference.index(span[0])
        assert span == [tuple(o) for o in reference[first:first + len(span)]]  # a contiguous slice
        positions.append((first, first + len(span)))
    assert positions[0][0] == 0 and positions[-1][1] == len(reference)
    for (_, end), (start, _) in zip(positions, positions[1:]):  # itertools.pairwise: Python 3.10+
        assert end - start == stride                                        # exactly doc_stride shared
    for w in wins[:-1]:
        assert len(w.input_ids) == max_length                               # full windows but the last


def test_window_offsets_map_back_to_context_text(tokenizer):
    context = "Zürich is the largest city in Switzerland; its café culture dates from 1900."
    (w,) = windows(tokenizer, "Which city is largest?", context, 64, 8)
    pieces = [(tokenizer.id_to_token(i), o) for i, o in zip(w.input_ids, w.offsets) if o is not None]
    for token, (s, e) in pieces:
        text = context[s:e].lower().replace("ü", "u").replace("é", "e")   # uncased, accents stripped
        assert token.removeprefix("##") == text
    assert context[pieces[0][1][0]:pieces[0][1][1]] == "Zürich"            # character, not byte, offsets
    assert [o for o, seq in zip(w.offsets, w.token_type_ids) if seq == 0] == [None] * w.token_type_ids.count(0)


def test_windows_leave_the_callers_tokenizer_alone(tokenizer):
    before = (tokenizer.truncation, tokenizer.padding)
    windows(tokenizer, QUESTION, FILLER * 3, 32, 8)
    assert (tokenizer.truncation, tokenizer.padding) == before
    assert len(tokenizer.encode("short").ids) == before[1]["length"]        # still pads as the file says


def test_short_context_is_one_window(tokenizer):
    wins = windows(tokenizer, QUESTION, "In the cellar.", 64, 16)
    assert len(wins) == 1 and len(_context_span(wins[0])) == 4


def test_question_too_long_and_bad_limits_raise_input_error(tokenizer, plain):
    question = "why " * 20
    n = len(plain.encode(question, add_special_tokens=False).ids)
    with pytest.raises(InputError, match=rf"question has {n} tokens, too long for --max-length 16; raise"):
        windows(tokenizer, question, FILLER, 16, 2)
    with pytest.raises(InputError, match=rf"question has {n} tokens, too long for --max-length {n + 3}"):
        windows(tokenizer, question, FILLER, n + 3, 0)                        # n + 3 special: no room
    assert len(windows(tokenizer, question, FILLER, n + 4, 0)) > 10           # one context token a window
    with pytest.raises(InputError, match="--doc-stride 1 leaves no new context"):
        windows(tokenizer, question, FILLER, n + 4, 1)                        # tokenizers would panic
    with pytest.raises(InputError, match="--max-length 4"):
        windows(tokenizer, "q", FILLER, 4, 0)
    with pytest.raises(InputError, match="--doc-stride 32"):
        windows(tokenizer, "q", FILLER, 32, 32)
    with pytest.raises(InputError, match="--doc-stride -1"):
        windows(tokenizer, "q", FILLER, 32, -1)


# ---------------------------------------------------------------- answer extraction

ANSWER = "beneath the ruined chapel of Ravenswood"


def _straddling(tokenizer, max_length: int = 32, stride: int = 8):
    """Return (context, answer start char, windows) with ANSWER cut by window 0's end, whole in window 1."""
    for n in range(1, 80):
        context = " ".join(["river"] * n) + f" The treasure lies {ANSWER}, the old tale says. " + FILLER
        start = context.index(ANSWER)
        end = start + len(ANSWER)
        wins = windows(tokenizer, QUESTION, context, max_length, stride)
        first, second = _context_span(wins[0]), _context_span(wins[1])
        if first[0][0] <= start < first[-1][1] < end and second[0][0] <= start and end <= second[-1][1]:
            return context, start, wins
    raise AssertionError("no filler length puts the answer across the first window's end")


def _token(window: Window, char: int, side: int) -> int:
    """Index of the context token starting (side 0) or ending (side 1) at ``char``."""
    return next(t for t, o in enumerate(window.offsets) if o is not None and o[side] == char)


def test_answer_straddling_two_windows_comes_from_the_second(tokenizer):
    context, start, wins = _straddling(tokenizer)
    end = start + len(ANSWER)
    width = max(len(w.offsets) for w in wins) + 5                     # a padded batch: longer rows
    starts, ends = np.zeros((len(wins), width), np.float32), np.zeros((len(wins), width), np.float32)
    # window 0: a strong start at the answer, a strong end on a question token (not a valid span)
    starts[0, _token(wins[0], start, 0)] = 10.0
    ends[0, 2] = 10.0
    # window 1: the whole answer
    starts[1, _token(wins[1], start, 0)] = 10.0
    ends[1, _token(wins[1], end, 1)] = 10.0
    # padding positions past a window's end must never be read
    for k, w in enumerate(wins):
        starts[k, len(w.offsets):] = ends[k, len(w.offsets):] = 1e6
    answer = extract_answer(list(starts), list(ends), wins, context)
    assert answer == {"text": ANSWER, "start": start, "end": end, "score": 20.0}
    assert context[answer["start"]:answer["end"]] == ANSWER
    # with one candidate per window, window 0 offers no valid span and window 1 still wins
    assert extract_answer(list(starts), list(ends), wins, context, n_best=1)["text"] == ANSWER
    # window 0 alone, one candidate each: start in context, end on the question -> no answer
    assert extract_answer(starts[:1], ends[:1], wins[:1], context, n_best=1) == \
        {"text": "", "start": 0, "end": 0, "score": None}


def test_extraction_rejects_too_long_and_reversed_spans(tokenizer):
    context = "The treasure lies " + ANSWER + ", the old tale says."
    (w,) = windows(tokenizer, QUESTION, context, 64, 8)
    a = _token(w, context.index(ANSWER), 0)
    b = _token(w, context.index(ANSWER) + len(ANSWER), 1)
    length = b - a + 1
    assert length > 3

    def logits(s: int, e: int, background: float = -100.0):
        start, end = np.full(len(w.offsets), background), np.full(len(w.offsets), background)
        start[s], end[e] = 5.0, 5.0
        return [start], [end]

    assert extract_answer(*logits(a, b), [w], context, n_best=1, max_answer_length=length)["text"] == ANSWER
    assert extract_answer(*logits(a, b), [w], context, n_best=1, max_answer_length=length - 1)["score"] is None
    assert extract_answer(*logits(b, a), [w], context, n_best=1)["score"] is None          # end before start
    # with every token a candidate the best valid span is a shorter, lower-scoring one
    other = extract_answer(*logits(a, b, 0.0), [w], context, n_best=64, max_answer_length=length - 1)
    assert other["text"] != ANSWER and other["score"] == 5.0
    assert ANSWER.startswith(other["text"]) or ANSWER.endswith(other["text"])


def test_nbest_lists_distinct_spans_best_first(tokenizer):
    context, _, wins = _straddling(tokenizer)
    rng = np.random.default_rng(0)
    starts = [rng.standard_normal(len(w.offsets)) for w in wins]
    ends = [rng.standard_normal(len(w.offsets)) for w in wins]
    ranked = nbest_answers(starts, ends, wins, context, n_best=7)
    assert 0 < len(ranked) <= 7
    assert [a["score"] for a in ranked] == sorted((a["score"] for a in ranked), reverse=True)
    assert len({(a["start"], a["end"]) for a in ranked}) == len(ranked)
    assert all(context[a["start"]:a["end"]] == a["text"] and a["start"] < a["end"] for a in ranked)
    assert extract_answer(starts, ends, wins, context, n_best=7) == ranked[0]


def test_extraction_input_errors(tokenizer):
    (w,) = windows(tokenizer, QUESTION, "In the cellar.", 64, 8)
    with pytest.raises(InputError, match="1 windows but 2 start"):
        extract_answer([np.zeros(len(w.offsets))] * 2, [np.zeros(len(w.offsets))] * 2, [w], "In the cellar.")
    with pytest.raises(InputError, match="logits"):
        extract_answer([np.zeros(3)], [np.zeros(3)], [w], "In the cellar.")
