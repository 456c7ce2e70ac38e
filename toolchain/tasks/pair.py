"""Sentence-pair classification (GLUE QNLI, MNLI, QQP): two texts in, one label out.

Rows, carving and tokens are the GLUE ones (``toolchain.tasks.base``); this kind's own is the
manifest's ``task_kind`` ``pair`` (``deploy/`` feeds two tab-separated texts per line and reads
the ``logits`` output through a softmax) and its tasks' files: MNLI's header names, its matched
dev file and the mismatched one scored beside it.
"""

from __future__ import annotations

from toolchain.tasks.base import GlueKind, TaskSpec, register_task


class PairKind(GlueKind):
    """Two texts per example, encoded as one sequence with segment ids; logits over the labels."""

    name = "pair"
    text_inputs = 2


PAIR = PairKind()

# Label ids follow GLUE (and the hub's ClassLabel order).
register_task(TaskSpec("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"), handler=PAIR))
register_task(TaskSpec("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                       dev_split="dev_matched", tsv_text_columns=("sentence1", "sentence2"),
                       tsv_label_column="gold_label", hub_dev_split="validation_matched",
                       extra_dev=(("mismatched", "dev_mismatched", "validation_mismatched"),), handler=PAIR))
register_task(TaskSpec("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"),
                       tsv_label_column="is_duplicate", tsv_labels=("0", "1"), handler=PAIR))

__all__ = ["PAIR", "PairKind"]
