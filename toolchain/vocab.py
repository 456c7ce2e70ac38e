"""Vocabulary trimming: keep the word pieces a task uses, drop the rest of the embedding table.

Most of a trimmed MiniLM's bytes are its 30,522-row word-embedding table, and a task touches a
few thousand rows. ``trim_vocab`` keeps the pieces the task's training texts produce, plus every
special token and every single-character piece (``a``, ``##a``), so that any text still
tokenises: a word whose pieces were dropped is split into smaller kept pieces, or becomes
``[UNK]`` where nothing fits. The tokenizer is rewritten with the same normaliser and settings
over the kept pieces, in their old order, and the embedding rows are taken in the same order,
so a text made only of kept pieces gets exactly the logits it got before. WordPiece (BERT)
tokenizers only.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from deploy.artifacts import atomic_path, write_json
from toolchain.errors import InputError

VOCAB_SCHEMA, VOCAB_VERSION = "sensibert.vocab", 1
RECORD_NAME = "vocab.json"
VOCAB_CHOICES = ("full", "task")
COPIED_FILES = ("plan.json", "masks.json", "metrics.json", "shrink.json")
TOKENIZER_KWARGS = ("do_lower_case", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
                    "tokenize_chinese_chars", "strip_accents", "model_max_length")


@dataclass(frozen=True)
class VocabResult:
    """What trimming kept and what it did to the eval texts' tokens."""

    out_dir: Path
    vocab_before: int
    vocab_after: int
    eval_tokens: int
    eval_unk_before: float      # fraction of eval tokens that were [UNK] with the full vocabulary
    eval_unk_after: float       # ... with the trimmed one
    eval_texts_changed: float   # fraction of eval texts tokenised differently

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _encode(tokenizer: Any, texts: Sequence[Any]) -> list[list[int]]:
    pairs = [t for t in texts if isinstance(t, (tuple, list))]
    if pairs and len(pairs) == len(texts):
        return tokenizer([a for a, _ in texts], [b for _, b in texts], truncation=False)["input_ids"]
    return tokenizer(list(texts), truncation=False)["input_ids"]


def kept_ids(tokenizer: Any, train_texts: Sequence[Any]) -> list[int]:
    """Return, in id order, the ids to keep: special tokens, single-character pieces, and every
    piece the training texts produce."""
    vocab = tokenizer.get_vocab()
    keep = set(tokenizer.all_special_ids)
    prefix = "##"
    keep |= {i for tok, i in vocab.items() if len(tok) == 1 or (tok.startswith(prefix) and len(tok) == len(prefix) + 1)}
    for ids in _encode(tokenizer, train_texts):
        keep.update(ids)
    return sorted(keep)


def trim_vocab(model_dir: str | Path, out_dir: str | Path, train_texts: Sequence[Any],
               eval_texts: Sequence[Any]) -> VocabResult:
    """Write ``model_dir`` with only the task's vocabulary into ``out_dir`` (atomically); return
    what was kept and the eval texts' [UNK] rates before and after."""
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification, \
        BertTokenizerFast

    import toolchain.modeling  # noqa: F401  registers sensibert
    from toolchain.models import head_kind, load_tokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    tokenizer = load_tokenizer(model_dir)
    if not isinstance(tokenizer, BertTokenizerFast):
        raise InputError(f"{model_dir}: vocabulary trimming supports WordPiece (BERT) tokenizers, this one is "
                         f"{type(tokenizer).__name__}; run without --vocab task")
    if not train_texts:
        raise InputError("vocabulary trimming needs the task's training texts; none were given")
    keep = kept_ids(tokenizer, train_texts)
    inverse = {i: tok for tok, i in tokenizer.get_vocab().items()}
    qa = head_kind(model_dir) == "qa"
    auto = AutoModelForQuestionAnswering if qa else AutoModelForSequenceClassification
    model = auto.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    old = model.get_input_embeddings().weight.detach()
    table = torch.nn.Embedding(len(keep), old.shape[1], padding_idx=None)
    with torch.no_grad():
        table.weight.copy_(old[torch.tensor(keep, dtype=torch.long)])
    model.set_input_embeddings(table)
    model.config.vocab_size = len(keep)
    # the pad token's new id, where the config records one
    if getattr(model.config, "pad_token_id", None) is not None and model.config.pad_token_id in keep:
        model.config.pad_token_id = keep.index(model.config.pad_token_id)

    with atomic_path(out_dir, is_dir=True) as tmp:
        (tmp / "vocab.txt").write_text("\n".join(inverse[i] for i in keep) + "\n", encoding="utf-8")
        kwargs = {k: tokenizer.init_kwargs[k] for k in TOKENIZER_KWARGS if k in tokenizer.init_kwargs}
        small = BertTokenizerFast(vocab_file=str(tmp / "vocab.txt"), **kwargs)
        small.save_pretrained(str(tmp))
        model.save_pretrained(str(tmp), safe_serialization=True)
        for name in COPIED_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        before, after = _encode(tokenizer, eval_texts), _encode(small, eval_texts)
        unk_old, unk_new = tokenizer.unk_token_id, small.unk_token_id
        total = sum(len(ids) for ids in before) or 1
        changed = sum(1 for a, b in zip(before, after) if [inverse[i] for i in a] != small.convert_ids_to_tokens(b))
        result = VocabResult(out_dir=out_dir, vocab_before=len(inverse), vocab_after=len(keep),
                             eval_tokens=total,
                             eval_unk_before=sum(ids.count(unk_old) for ids in before) / total,
                             eval_unk_after=sum(ids.count(unk_new) for ids in after) / max(sum(map(len, after)), 1),
                             eval_texts_changed=changed / max(len(eval_texts), 1))
        write_json(tmp / RECORD_NAME, VOCAB_SCHEMA, VOCAB_VERSION,
                   {**result.to_dict(), "source": str(model_dir.resolve()), "kept_ids": keep})
    AutoConfig.from_pretrained(str(out_dir))  # loads back
    return result
