"""Tasks as a layer of their own: one module per task kind, one registry of tasks by name.

- ``base``: the registry (``TaskSpec``, ``register_task``, ``get_task``, ``TASKS``), the
  ``TaskKind`` interface every kind implements, ``TaskData`` and ``load_task_data``, and the
  GLUE TSV / hub / carving code the classification kinds share;
- ``single``: single-sentence classification (sst2, with its demo set);
- ``pair``: sentence-pair classification (qnli, mnli, qqp);
- ``qa``: extractive question answering (squad): SQuAD JSON, windows, F1 / exact match.

Importing this package registers the built-in tasks. A new kind is a module that subclasses
``TaskKind`` and calls ``register_task``; the stages (``finetune``, ``sensitivity``, ``plan``,
``retrain_free``) never import this package: their callers hand them what a task provides
(``TaskData.scorer()``, ``TaskData.label_keys``, the tokenised splits and the collator).
"""

from toolchain.tasks.base import (DATA_ENV, TASKS, CarveConfig, MissingData, TaskData, TaskKind, TaskSpec,
                                  carve_keys, check_carve_key, get_task, load_extra_dev, load_split, load_task_data,
                                  register_task)
# Importing the kind modules registers the built-in tasks, in this order (sst2, qnli, mnli, qqp, squad).
from toolchain.tasks import single  # noqa: E402,F401,I001
from toolchain.tasks import pair  # noqa: E402,F401
from toolchain.tasks import qa  # noqa: E402,F401

__all__ = ["DATA_ENV", "TASKS", "CarveConfig", "MissingData", "TaskData", "TaskKind", "TaskSpec", "carve_keys",
           "check_carve_key", "get_task", "load_extra_dev", "load_split", "load_task_data", "register_task"]
