"""Stage 4: physical removal. Masked heads and neurons are cut out of the weight matrices.

``shrink`` turns a masked dense classifier of any supported family (toolchain/families) into a
``SensiBertForSequenceClassification`` whose config records each layer's head count and FFN
width (and the family's embedding and head settings); ``shrink_dir`` does it for a fine-tuned
masked-model directory and writes a normal checkpoint (safetensors) that reloads through the
Auto classes, after checking that it computes the masked model's logits on padded real text
and that its parameter count is what toolchain/costs.py predicts.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.artifacts import atomic_path, package_versions, write_json
from deploy.latency_table import layer_removed
from toolchain.costs import encoder_params, shape_from_config, total_params
from toolchain.errors import InputError
from toolchain.families import TRIMMED_MODEL_TYPE, family_of, layer_parts
from toolchain.masks import MaskSet

SHRINK_SCHEMA = "sensibert.shrink"
SHRINK_VERSION = 1
RECORD_NAME = "shrink.json"
COPIED_FILES = ("plan.json", "masks.json", "metrics.json")  # provenance and the task travel along


@dataclass(frozen=True)
class ShrinkReport:
    """What ``shrink_dir`` wrote and how it was checked."""

    out_dir: Path
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    params_before: int
    params_after: int
    encoder_params_after: int
    max_abs_diff: float
    tolerance: float

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "heads": list(self.heads), "ffn": list(self.ffn),
                "params_before": self.params_before, "params_after": self.params_after,
                "encoder_params_after": self.encoder_params_after, "max_abs_diff": self.max_abs_diff,
                "tolerance": self.tolerance}


def _head_rows(heads: tuple[int, ...], head_size: int) -> list[int]:
    """Return the rows of Q/K/V (and columns of W_o) that belong to ``heads``."""
    return [h * head_size + j for h in heads for j in range(head_size)]


def shrink(model: Any, masks: MaskSet) -> Any:
    """Return a SensiBert classifier (or QA model) holding only the units ``masks`` keeps.

    Q/K/V rows and W_o columns of removed heads, W_1 rows and W_2 columns of removed neurons are
    cut, and a layer with neither heads nor neurons left goes whole; everything else (embeddings, biases b_o and b_2, LayerNorms, pooler, classifier or QA head) is
    copied. The result is in eval mode with the source's dtype. Hooks on ``model`` are ignored:
    only its weights are read.

    Example:
        >>> small = shrink(masked_model, MaskSet.load("masked/masks.json"))   # doctest: +SKIP
    """
    import torch

    from toolchain.modeling import SensiBertConfig, SensiBertForQuestionAnswering, SensiBertForSequenceClassification

    family = family_of(model)
    if not (hasattr(model, "classifier") or hasattr(model, "qa_outputs")) or \
            model.config.model_type == TRIMMED_MODEL_TYPE:
        raise InputError(f"shrink needs a dense sequence classifier or QA model, got {type(model).__name__}; "
                         "pass the masked model saved by sensibert finetune")
    small_cls = SensiBertForQuestionAnswering if hasattr(model, "qa_outputs") else SensiBertForSequenceClassification
    config = model.config
    if getattr(config, "pruned_heads", None):
        raise InputError("the model already has pruned_heads in its config; shrink the dense masked model instead")
    layers = layer_parts(model)
    if len(layers) != len(masks.kept_heads):
        raise InputError(f"masks have {len(masks.kept_heads)} layers but the model has {len(layers)}; "
                         "use the masks saved with this model")
    head_size = layers[0].head_size
    for i, layer in enumerate(layers):
        have = (layer.num_heads, layer.ffn_in.out_features)
        if have != (masks.num_heads, masks.ffn_size):
            raise InputError(f"masks index {masks.num_heads} heads and {masks.ffn_size} neurons but layer {i} has "
                             f"{have[0]} and {have[1]}; shrink the dense masked model the masks were made for")
    new_config = SensiBertConfig.from_dense(config, masks.heads, masks.ffn)
    new_config.architectures = [small_cls.__name__]
    state = family.canonical_state(model.state_dict())  # BERT's names, whatever the family
    for i, (heads, neurons) in enumerate(zip(masks.kept_heads, masks.kept_ffn)):
        prefix = f"bert.encoder.layer.{i}."
        if layer_removed(len(heads), len(neurons)):  # the identity: not even its biases and LayerNorms
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
            continue
        rows = torch.tensor(_head_rows(heads, head_size), dtype=torch.long)
        cols = torch.tensor(neurons, dtype=torch.long)
        for name in ("query", "key", "value"):
            for kind in ("weight", "bias"):
                key = f"{prefix}attention.self.{name}.{kind}"
                state[key] = state[key].index_select(0, rows)
        key = f"{prefix}attention.output.dense.weight"
        state[key] = state[key].index_select(1, rows)
        for kind in ("weight", "bias"):
            key = f"{prefix}intermediate.dense.{kind}"
            state[key] = state[key].index_select(0, cols)
        key = f"{prefix}output.dense.weight"
        state[key] = state[key].index_select(1, cols)
    dtype = next(model.parameters()).dtype
    small = small_cls(new_config).to(dtype)
    # strict: a key the source lacks or has extra is a bug in this mapping, not something to skip
    small.load_state_dict({k: v.clone().contiguous() for k, v in state.items()}, strict=True)
    return small.eval()


def check_masked_dir(masked_dir: Path) -> None:
    """Raise InputError unless ``masked_dir`` looks like a masked-model directory."""
    from toolchain.models import read_model_config, resolve_model_dir

    if not masked_dir.is_dir():
        raise InputError(f"{masked_dir}: not a directory; pass the masked-model directory written by "
                         "sensibert finetune")
    if not (masked_dir / "masks.json").is_file():
        raise InputError(f"{masked_dir}: not a masked model (no masks.json); pass the directory written by "
                         "sensibert finetune")
    resolve_model_dir(str(masked_dir))  # config.json, supported model_type, weights
    model_type = read_model_config(masked_dir).get("model_type")
    if model_type == TRIMMED_MODEL_TYPE:
        raise InputError(f"{masked_dir}: model_type {model_type!r} is already trimmed; shrink the dense "
                         "masked model written by sensibert finetune")


def shrink_dir(masked_dir: str | Path, out_dir: str | Path, atol: float = 1e-4) -> ShrinkReport:
    """Shrink a masked-model directory into ``out_dir`` (written atomically); return the report.

    ``out_dir`` gets the checkpoint (config.json + model.safetensors), the tokenizer, copies of
    plan.json / masks.json / metrics.json, and ``shrink.json`` recording the checks. Raises
    ParityError (and writes nothing) when the shrunk logits differ from the masked model's by
    more than ``atol`` on padded real text, or when its parameter count is not costs.py's.
    """
    from toolchain.finetune import load_masked
    from toolchain.models import load_tokenizer
    from toolchain.parity import check_batches, check_torch, raise_on_failure

    masked_dir, out_dir = Path(masked_dir), Path(out_dir)
    check_masked_dir(masked_dir)
    if out_dir.resolve() == masked_dir.resolve():
        raise InputError(f"--out {out_dir} is the masked-model directory itself; pass a new directory")
    ours = out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / RECORD_NAME).is_file())
    if out_dir.exists() and not ours:
        raise InputError(f"{out_dir} exists and is not an earlier shrink output; pass a new or empty directory")
    tokenizer = load_tokenizer(masked_dir)
    masked, handle = load_masked(masked_dir)
    small = shrink(masked, handle.masks)

    batches = check_batches(tokenizer, 64, masked.config.max_position_embeddings)
    report = check_torch(masked, small, batches, artifact="shrunk model", atol=atol)
    shape = shape_from_config(small.config)
    expected, counted = total_params(shape), sum(p.numel() for p in small.parameters())
    count_failure = [] if expected == counted else [
        f"shrunk model has {counted} parameters but costs.py predicts {expected} for heads "
        f"{list(shape.heads)} and FFN {list(shape.ffn)}"]
    raise_on_failure([report], extra=count_failure,
                     fix="nothing was written; this is a bug in shrink or costs, report it with the masks.json used")

    with atomic_path(out_dir, is_dir=True) as tmp:
        small.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name in COPIED_FILES:
            if (masked_dir / name).is_file():
                shutil.copy2(masked_dir / name, tmp / name)
        result = ShrinkReport(out_dir=out_dir, heads=shape.heads, ffn=shape.ffn,
                              params_before=sum(p.numel() for p in masked.parameters()),
                              params_after=counted, encoder_params_after=encoder_params(shape),
                              max_abs_diff=report.max_abs_diff, tolerance=atol)
        write_json(tmp / RECORD_NAME, SHRINK_SCHEMA, SHRINK_VERSION,
                   {**result.to_dict(), "source": str(masked_dir.resolve()), "parity": report.to_dict(),
                    "package_versions": package_versions()})
    return result
