"""Single-sentence classification (GLUE SST-2): one text in, one label out.

Rows, carving and tokens are the GLUE ones (``toolchain.tasks.base``); what is this kind's own is
the manifest's ``task_kind`` ``single`` (``deploy/`` feeds one text per line and reads the
``logits`` output through a softmax), and SST-2's built-in demo set, used when no other source
has the data.
"""

from __future__ import annotations

import logging
from typing import Any

from toolchain.tasks.base import DATA_ENV, GlueKind, TaskSpec, _features, register_task

log = logging.getLogger(__name__)


class SingleKind(GlueKind):
    """One text per example; the classifier's logits over the labels."""

    name = "single"
    text_inputs = 1


SINGLE = SingleKind()


def _load_demo(spec: TaskSpec, key: str) -> tuple[Any, str]:
    """Return (rows, source) of the synthetic SST-2 demo split ``key`` (train or dev), with a warning."""
    from datasets import Dataset

    from toolchain.tasks.demo_data import DEMO_SIZES, demo_rows

    rows = demo_rows(key)
    log.warning("using the built-in DEMO %s set (%d synthetic template sentences, not SST-2; results "
                "are not comparable to SST-2); pass --data-dir or set %s for the real data",
                key, DEMO_SIZES[key], DATA_ENV)
    columns = {"sentence": [r["sentence"] for r in rows], "label": [r["label"] for r in rows]}
    return Dataset.from_dict(columns, features=_features(spec)), f"demo:{spec.name}/{key}"


# Label ids follow GLUE (and the hub's ClassLabel order).
register_task(TaskSpec("sst2", "SST-2", ("sentence",), ("negative", "positive"), tsv_labels=("0", "1"),
                       handler=SINGLE, demo=_load_demo))

__all__ = ["SINGLE", "SingleKind"]
