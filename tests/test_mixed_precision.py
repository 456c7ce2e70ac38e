"""Sensitivity-guided mixed precision: the pure choice and error arithmetic (graph tests live in
tests/test_export.py beside the other int8 variants)."""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.errors import InputError
from toolchain import mixed_precision as mp
from toolchain.mixed_precision import NodeProbe, check_share, choose, output_error


def _probes(seed: int, n: int = 12) -> list[NodeProbe]:
    rng = np.random.default_rng(seed)
    return [NodeProbe(f"n{i}", "MatMul", int(rng.integers(1, 1000)), float(rng.normal())) for i in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_choice_stays_within_the_allowance_and_keeps_only_helpful_nodes(seed):
    probes = _probes(seed)
    share = float(np.random.default_rng(seed + 100).uniform(0, 0.5))
    kept = choose(probes, share)
    by_name = {p.name: p for p in probes}
    assert sum(by_name[n].macs for n in kept) <= share * sum(p.macs for p in probes)
    assert all(by_name[n].gain > 0 for n in kept)
    assert kept == tuple(sorted(kept)) and choose(probes, share) == kept  # reproducible


def test_choice_prefers_gain_per_mac_and_fills_with_smaller_nodes():
    probes = [NodeProbe("big", "MatMul", 600, 6.0), NodeProbe("dense", "MatMul", 100, 5.0),
              NodeProbe("small", "Attention", 300, 1.5), NodeProbe("harmless", "MatMul", 10, -1.0)]
    # allowance 0.4 * 1010 = 404: "dense" (0.05 per MAC) first; "big" does not fit; "small" does
    assert choose(probes, 0.4) == ("dense", "small")
    assert choose(probes, 0.0) == ()
    assert choose(probes, 1.0) == ("big", "dense", "small")  # never the node whose gain is negative


@pytest.mark.parametrize("share", [-0.1, 1.5, "0.1", True])
def test_share_out_of_range_is_refused(share):
    with pytest.raises(InputError, match="fp32 share"):
        check_share(share)


def test_output_error_is_zero_on_equal_outputs_and_grows_with_the_change():
    ref = [{"logits": np.array([[2.0, -1.0]])}, {"start_logits": np.array([[0.1, 3.0, -2.0]])}]
    assert output_error(ref, ref) == 0.0
    near = [{"logits": np.array([[1.9, -1.0]])}, {"start_logits": np.array([[0.1, 2.9, -2.0]])}]
    far = [{"logits": np.array([[-1.0, 2.0]])}, {"start_logits": np.array([[3.0, 0.1, -2.0]])}]
    assert 0 < output_error(ref, near) < output_error(ref, far)
    # near a decision boundary the same logit change moves the prediction more
    edge, moved = [{"logits": np.array([[0.0, 0.0]])}], [{"logits": np.array([[0.5, 0.0]])}]
    sure, moved_sure = [{"logits": np.array([[8.0, 0.0]])}], [{"logits": np.array([[8.5, 0.0]])}]
    assert output_error(edge, moved) > output_error(sure, moved_sure)


def test_agreement_counts_rows_whose_argmax_is_the_references():
    ref = [{"logits": np.array([[0.0, 1.0]])}, {"start": np.array([[3.0, 0.0, 0.0]]), "end": np.array([[0.0, 0.0, 1.0]])}]
    same = [{"logits": np.array([[0.2, 0.9]])}, {"start": np.array([[1.0, 0.5, 0.0]]), "end": np.array([[0.0, 2.0, 1.0]])}]
    assert mp.agreement(ref, ref) == 1.0
    assert mp.agreement(ref, same) == pytest.approx(2 / 3)  # the end token moved


# one QA window: [CLS] q q [SEP] c c c c [SEP] and one pad; the context is tokens 4..7
QA_FEED = {"input_ids": np.zeros((1, 10), dtype=np.int64),
           "token_type_ids": np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1, 0]]),
           "attention_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 0]])}


def _qa(start: list[float], end: list[float]) -> dict[str, np.ndarray]:
    return {"start_logits": np.array([start]), "end_logits": np.array([end])}


def test_qa_agreement_compares_answer_spans_not_tokens_apart():
    ref = _qa([0, 0, 0, 0, 5, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 4, 0, 0, 0])    # answer: tokens 4..6
    # the best span is unchanged though the start's runner-up (out of the answer) now beats its top
    # logit of the question: argmax per output called this a change
    moved_outside = _qa([0, 9, 0, 0, 5, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 4, 0, 0, 0])
    # start and end argmax (6, 5) are no valid span in either; per output both "agree", but the
    # runner-ups changed and the answer moves from 4..5 to 6..6
    invalid = _qa([0, 0, 0, 0, 3, 0, 5, 0, 0, 0], [0, 0, 0, 0, 0, 6, 2, 0, 0, 0])
    swapped = _qa([0, 0, 0, 0, 1, 0, 5, 0, 0, 0], [0, 0, 0, 0, 0, 6, 4.5, 0, 0, 0])
    # the best-scoring valid span moves to 5..5
    moved = _qa([0, 0, 0, 0, 5, 5.5, 0, 0, 0, 0], [0, 0, 0, 0, 0, 4, 4, 0, 0, 0])
    feeds = [QA_FEED]
    assert mp.agreement([ref], [ref], feeds) == 1.0
    assert mp.agreement([ref], [moved_outside], feeds) == 1.0
    assert mp.agreement([ref], [moved], feeds) == 0.0
    context = mp._context(QA_FEED, (1, 10))[0]
    assert (mp.answer_span(invalid, 0, context), mp.answer_span(swapped, 0, context)) == ((4, 5), (6, 6))
    assert mp.agreement([ref, invalid], [ref, swapped], feeds * 2) == 0.5
    apart = [{"s": v["start_logits"], "e": v["end_logits"]} for v in (invalid, swapped)]
    assert mp.agreement(apart[:1], apart[1:]) == 1.0   # the same logits judged token by token


def test_qa_context_is_the_second_segment_without_its_closing_special_token():
    assert np.flatnonzero(mp._context(QA_FEED, (1, 10))[0]).tolist() == [4, 5, 6, 7]
    no_segments = {k: v for k, v in QA_FEED.items() if k != "token_type_ids"}
    assert np.flatnonzero(mp._context(no_segments, (1, 10))[0]).tolist() == list(range(1, 8))
    zeros = {**QA_FEED, "token_type_ids": np.zeros((1, 10), dtype=np.int64)}
    assert np.flatnonzero(mp._context(zeros, (1, 10))[0]).tolist() == list(range(1, 8))


@pytest.mark.parametrize("per_channel, mixed, kept", [
    ({"agreement": 0.99, "kl": 1e-3}, {"agreement": 0.995, "kl": 2e-3}, True),    # more agreement wins
    ({"agreement": 0.99, "kl": 1e-3}, {"agreement": 0.99, "kl": 5e-4}, True),     # as much, less KL
    ({"agreement": 0.99, "kl": 1e-3}, {"agreement": 0.99, "kl": 1e-3}, False),    # a tie: the faster graph
    ({"agreement": 0.995, "kl": 2e-3}, {"agreement": 0.99, "kl": 1e-4}, False),   # less agreement loses
])
def test_mixed_is_kept_only_where_it_follows_fp32_better(per_channel, mixed, kept):
    assert (mp.closest({"per_channel": per_channel, "mixed": mixed}) == "mixed") is kept


def test_the_closest_graph_is_chosen_among_several_and_a_tie_keeps_the_first_listed():
    scores = {"0.9": {"agreement": 0.99, "kl": 1e-3}, "0.65": {"agreement": 0.995, "kl": 3e-3},
              "1": {"agreement": 0.995, "kl": 2e-3}, "0.8": {"agreement": 0.995, "kl": 2e-3}}
    assert mp.closest(scores) == "1"   # most agreement, then least KL; "0.8" ties it and is listed after
    assert mp.closest({"0.9": scores["0.9"]}) == "0.9"
