"""Vocabulary trimming round trip: tokenizer and embedding table agree, kept texts keep their logits."""

from __future__ import annotations

import numpy as np
import pytest

from test_shrink import make_shrunk_dir  # noqa: E402  (tests/ is on sys.path)

TRAIN = ["the movie was good", "the plot was boring", "what a brilliant film"]


@pytest.fixture(scope="module")
def small_dir(tiny_bert_dir, tmp_path_factory):
    return make_shrunk_dir(tiny_bert_dir, tmp_path_factory.mktemp("vocab"), seed=5)


def _logits(folder, texts):
    import torch
    from transformers import AutoModelForSequenceClassification

    import toolchain.modeling  # noqa: F401
    from toolchain.models import load_tokenizer

    tok = load_tokenizer(folder)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return model(**tok(texts, padding=True, return_tensors="pt")).logits.numpy(), tok


def test_trim_keeps_the_task_pieces_and_their_logits(small_dir, tmp_path):
    from toolchain.vocab import trim_vocab

    res = trim_vocab(small_dir, tmp_path / "trimmed", TRAIN, ["the actors love paris", "the movie was good"])
    before, tok_before = _logits(small_dir, TRAIN)
    after, tok_after = _logits(tmp_path / "trimmed", TRAIN)
    assert res.vocab_after < res.vocab_before and len(tok_after) == res.vocab_after
    assert np.abs(before - after).max() < 1e-5                       # same pieces, same rows: same logits
    for text in TRAIN:
        assert tok_before.tokenize(text) == tok_after.tokenize(text)
    # "actors" and "paris" were not in the training texts: split into kept single characters
    assert tok_after.tokenize("paris") == ["p", "##a", "##r", "##i", "##s"]
    assert res.eval_texts_changed == 0.5 and res.eval_unk_after == 0.0
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(str(tmp_path / "trimmed")).vocab_size == res.vocab_after


def test_unknown_characters_become_unk_and_are_counted(small_dir, tmp_path):
    from toolchain.vocab import trim_vocab

    res = trim_vocab(small_dir, tmp_path / "trimmed", TRAIN, ["the movie was good", "the 7 movie"])
    assert res.eval_unk_before == res.eval_unk_after > 0                 # "7" was never in the vocabulary
    assert res.eval_tokens > 0
