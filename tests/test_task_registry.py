"""A new task kind is one module that registers itself: no change to the trainer, the CLI or
the registry's code.

The toy module below (written to a file and imported like any plugin module) reads JSON lines,
scores with a metric of its own name, and is then fine-tuned through ``sensibert finetune``
on a tiny random BERT, exactly as a built-in task is.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

TOY_MODULE = '''
"""Toy single-sentence task: JSON lines {"text": ..., "polarity": "up" | "down"}."""

import json
from pathlib import Path

from toolchain.errors import InputError
from toolchain.scoring import Scorer
from toolchain.tasks import TaskData, TaskSpec, register_task
from toolchain.tasks.base import TaskKind, _features, rows_hash, subset, tokenize

SEEN = {"loads": 0, "scored": 0}


class ToyKind(TaskKind):
    name = "single"          # deploy/ reads it like any one-text classifier
    metric = "hit_rate"      # a primary score of its own name: the trainer must select by it

    def load(self, spec, tokenizer, *, data_dir, max_length, max_train_samples, max_eval_samples, seed,
             need_train, carve, doc_stride):
        from datasets import Dataset
        from transformers import DataCollatorWithPadding

        if data_dir is None:
            raise InputError("the toy task needs --data-dir")
        SEEN["loads"] += 1
        raw = {}
        for split in (("train", "dev") if need_train else ("dev",)):
            rows = [json.loads(line) for line in (Path(data_dir) / f"{split}.jsonl").read_text().splitlines()]
            ds = Dataset.from_dict({"text": [r["text"] for r in rows],
                                    "label": [spec.label_names.index(r["polarity"]) for r in rows]},
                                   features=_features(spec))
            cap = max_train_samples if split == "train" else max_eval_samples
            raw["train" if split == "train" else "eval"] = subset(ds, cap, seed)
        tokenised = {k: tokenize(ds, spec, tokenizer, max_length) for k, ds in raw.items()}
        return TaskData(task=spec, train=tokenised.get("train"), eval=tokenised["eval"], source=f"jsonl:{data_dir}",
                        data_hash=rows_hash(spec, max_length, raw), collator=DataCollatorWithPadding(tokenizer),
                        eval_rows=raw["eval"])

    def scorer(self, data):
        import numpy as np

        def fn(predictions, label_ids):
            SEEN["scored"] += 1
            logits = predictions[0] if isinstance(predictions, tuple) else predictions
            return {"hit_rate": float((np.argmax(logits, axis=-1) == label_ids).mean())}
        return Scorer("hit_rate", fn)


TOY = register_task(TaskSpec("toy", "TOY", ("text",), ("down", "up"), handler=ToyKind()))
'''

UP = ["good", "great", "brilliant", "fun", "best"]
DOWN = ["bad", "awful", "boring", "dull", "worst"]


def _rows(n: int, offset: int) -> list[dict]:
    return [{"text": f"the film was {(UP if i % 2 else DOWN)[(i + offset) % 5]}", "polarity": "up" if i % 2 else "down"}
            for i in range(n)]


@pytest.fixture
def toy_task(tmp_path, monkeypatch):
    """Import the toy module from a file (it registers "toy"); unregister it afterwards."""
    from toolchain.tasks import TASKS

    (tmp_path / "toy_task_module.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_task_module")
    try:
        yield module
    finally:
        TASKS.pop("toy", None)
        sys.modules.pop("toy_task_module", None)


def test_a_registered_toy_task_is_found_by_name(toy_task):
    from toolchain.tasks import get_task

    spec = get_task("toy")
    assert spec is toy_task.TOY and spec.kind == "single" and spec.metric == "hit_rate"
    assert spec.handler.carve_keys(spec) == ("text",)  # the default: its text column


def test_toy_task_fine_tunes_through_the_cli(toy_task, tiny_bert_dir, tmp_path):
    """``sensibert finetune --task toy``: the task's reader, hash and scorer, the trainer untouched."""
    from toolchain.cli import main
    from toolchain.costs import shape_from_config
    from toolchain.finetune import read_metrics
    from toolchain.masks import MaskSet
    from toolchain.models import load_task_model, model_hash
    from toolchain.plan import Plan, architecture_of

    data_dir = tmp_path / "toy"
    data_dir.mkdir()
    for split, rows in (("train", _rows(32, 0)), ("dev", _rows(12, 2))):
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = load_task_model(Path(tiny_bert_dir), toy_task.TOY)  # a tiny random BertForSequenceClassification
    assert type(model).__name__.endswith("ForSequenceClassification")
    shape = shape_from_config(model.config)
    plan = Plan(model_hash=model_hash(tiny_bert_dir), architecture=architecture_of(shape), heads=(3, 2),
                ffn=(30, 20), allocation="uniform").save(tmp_path / "plan.json")
    out = tmp_path / "ft"
    rc = main(["finetune", "--model", str(tiny_bert_dir), "--task", "toy", "--data-dir", str(data_dir),
               "--plan", str(plan), "--out", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
               "--max-length", "16", "--no-progress"])
    assert rc == 0
    assert toy_task.SEEN["loads"] == 1 and toy_task.SEEN["scored"] >= 2  # its reader and its scorer ran
    metrics = read_metrics(out / "metrics.json")
    assert metrics["task"] == "toy" and metrics["task_kind"] == "single" and metrics["metric"] == "hit_rate"
    assert [e["epoch"] for e in metrics["dev_accuracy"]] == [1.0, 2.0]
    assert set(metrics["best"]["scores"]) == {"hit_rate"} and 0.0 <= metrics["best"]["accuracy"] <= 1.0
    assert metrics["train_samples"] == 32 and metrics["eval_samples"] == 12 and len(metrics["data_hash"]) == 64
    assert MaskSet.load(out / "masks.json").heads == (3, 2)
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "down", "1": "up"}
