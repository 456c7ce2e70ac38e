"""Stage 4b: a quantisation-aware phase on the trimmed model, before export.

The trimmed model (``sensibert shrink``'s folder, any per-layer shape) is trained for a short
while as its int8 file will compute (``toolchain/fake_quant.py``: dynamic activations, per-channel
or per-tensor weights, the embedding block's tables), distilled from the dense teacher as
budgeted fine-tuning distils, then its weights are baked onto the int8 grid: the quantiser
re-derives the same scales from them, so the weight rounding costs nothing and what is left
between the fp32 and the int8 file is the activations' rounding, which the phase trained against.

No masks and no ramp (nothing is trimmed here), and the kept model is the last one: nothing is
selected, so the eval split only reports. The Trainer settings and the distillation loss are
budgeted fine-tuning's (``toolchain.finetune``).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deploy.artifacts import atomic_path, package_versions, write_json
from toolchain.errors import InputError
from toolchain.finetune import FinetuneConfig, _DistilTrainer, _training_args, check_teacher

QAT_SCHEMA = "sensibert.qat"
QAT_VERSION = 1
RECORD_NAME = "qat.json"
# The phase's recipe in `run --qat` and bench/int8_accuracy.py: one epoch over at most this many
# training rows at a learning rate well below fine-tuning's (the model is trained already).
QAT_ROWS = 4000
QAT_LR = 1e-5


def phase_config(variant: str, preset: str, batch_size: int, seed: int, distill_hidden: float = 1.0,
                 progress: bool = True) -> FinetuneConfig:
    """Return the phase's settings for the int8 ``variant`` shipped (``fake_quant.variant_for``)."""
    from toolchain.fake_quant import variant_for

    return FinetuneConfig(epochs=1.0, lr=QAT_LR, batch_size=batch_size, warmup_ratio=0.06,
                          fake_quant=variant_for(variant),
                          fake_quant_preset=preset, seed=seed, distill_hidden=distill_hidden, progress=progress)


def quantisation_aware(model: Any, train_dataset: Any, eval_dataset: Any, collator: Any, config: FinetuneConfig,
                       out_dir: str | Path, teacher: Any = None, *, scorer: Any = None,
                       label_keys: tuple[str, ...] = ("labels",), provenance: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """Train ``model`` (trimmed or not) with ``config.fake_quant``'s fake quantisation, bake its
    weights onto the int8 grid and write it to ``out_dir`` (a model folder ``export`` reads, written
    atomically); return the record written beside it (``qat.json``)."""
    from transformers import Trainer

    from deploy.int8 import unsigned_weights
    from toolchain import fake_quant
    from toolchain.progress import one_bar
    from toolchain.scoring import accuracy_scorer

    if config.fake_quant is None:
        raise InputError("the quantisation-aware phase needs an int8 variant to imitate; set fake_quant "
                         "(e.g. dynamic-per-channel)")
    if train_dataset is None or len(train_dataset) == 0:
        raise InputError("the quantisation-aware phase got no training rows; it trains on the task's training split")
    if teacher is not None:
        check_teacher(teacher.config, model.config, hidden=config.distill_hidden > 0)
    scorer = scorer or accuracy_scorer()
    out_dir = Path(out_dir)
    work = out_dir.parent / f".{out_dir.name}.checkpoints"
    args = _training_args(config, work)
    args.save_strategy = "no"
    extra = {"teacher": teacher, "alpha": config.distill_alpha, "temperature": config.temperature,
             "hidden": config.distill_hidden, "label_keys": tuple(label_keys)} if teacher is not None else {}

    def compute(pred) -> dict[str, float]:
        return scorer.fn(pred.predictions, pred.label_ids)

    handle = fake_quant.attach(model, config.fake_quant, unsigned_weights(config.fake_quant_preset))
    try:
        trainer = (_DistilTrainer if teacher is not None else Trainer)(
            model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=collator,
            compute_metrics=compute, **extra)
        if config.progress:
            one_bar(trainer, scorer.metric)
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        handle.detach(bake=True)
        scores = trainer.evaluate(eval_dataset)
    finally:
        handle.detach()
        shutil.rmtree(work, ignore_errors=True)
    record = {"variant": config.fake_quant, "preset": config.fake_quant_preset, "steps": trainer.state.global_step,
              "wall_time_s": round(wall, 3), "train_samples": len(train_dataset), "distilled": teacher is not None,
              "dev_scores_baked_fp32": {k[5:]: v for k, v in scores.items() if k.startswith("eval_")},
              "settings": asdict(config), **dict(provenance or {}), "package_versions": package_versions()}
    tokenizer = getattr(collator, "tokenizer", None)
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / RECORD_NAME, QAT_SCHEMA, QAT_VERSION, record)
    return record


__all__ = ["QAT_LR", "QAT_ROWS", "QAT_SCHEMA", "QAT_VERSION", "RECORD_NAME", "phase_config", "quantisation_aware"]
