"""Stage 5 (first half): the trimmed classifier as checked ONNX files, ready for a device.

``export`` writes into a new folder, atomically:

- ``model.onnx``: fp32, through optimum's exporter; with ``optimize``, rewritten by
  onnxruntime's transformer optimizer into fused Attention / SkipLayerNormalization /
  BiasGelu kernels carrying each layer's own head count;
- ``model.int8.onnx`` with ``quantize="int8"``: dynamic int8 of the encoder's matmuls through
  optimum's ORTQuantizer;
- ``tokenizer.json``, ``export.json`` (what was checked, with the numbers) and, when
  ``deploy.manifest`` is available, ``sensibert.json`` hashing every file.

Every ONNX file is checked against the PyTorch model on padded real text at the nominal and an
odd sequence length before the folder is kept (toolchain/parity.py); its encoder parameters
(from the initializers) must equal costs.py's count, and fused Attention nodes must carry the
layer's head count. All failures are collected into one ParityError; on any error nothing is
left behind and an existing folder at the target is untouched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from deploy.artifacts import atomic_path, package_versions, sha256_file, write_json
from deploy.int8 import (DEFAULT_PRESET, DYNAMIC_OPS, INT8_VARIANTS, PRESETS, Int8Variant, check_preset, default_variant,
                         get_variant, preset_for)
from deploy.latency_table import graph_layers
from deploy.manifest import TASK_KINDS
from toolchain import calibration as cal
from toolchain.errors import InputError
from toolchain import mixed_precision as mp
from toolchain.mixed_precision import DEFAULT_FP32_SHARE, check_share
from toolchain.parity import FP32_ATOL, INT8_MIN_AGREEMENT

EXPORT_SCHEMA = "sensibert.export"
EXPORT_VERSION = 1
RECORD_NAME = "export.json"
FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
DEFAULT_OPSET = 17
# LayerNormalization is one ONNX op from opset 17: below it the export decomposes every
# LayerNorm into nine nodes, which inspect_artifact cannot split into layers.
MIN_OPSET = 17
QUANTIZE_CHOICES = (None, "int8")
DEFAULT_MAX_LENGTH = 128
PAIR_TASKS = frozenset({"qnli", "mnli", "qqp", "rte", "mrpc", "stsb", "sts-b", "wnli"})
QA_TASKS = frozenset({"squad"})


@dataclass(frozen=True)
class ExportConfig:
    """How to export: opset, graph fusion, int8, and the parity limits."""

    opset: int = DEFAULT_OPSET
    optimize: bool = False
    quantize: str | None = None           # None or "int8"
    int8_variant: str | None = None       # deploy.int8.INT8_VARIANTS; None: the profile's, else the default
    int8_preset: str | None = None        # optimum AutoQuantizationConfig preset; None: from the profile's ISA
    calibration_samples: int = 128        # static, mixed and smoothed int8: calibration inputs used (at most)
    calibration_selection: str = cal.DEFAULT_SELECTION  # which of them (toolchain/calibration.py)
    int8_fp32_nodes: tuple[str, ...] = ()  # a mixed-precision plan: these quantisable nodes stay fp32
    int8_fp32_share: float = DEFAULT_FP32_SHARE  # mixed variant: MACs share its probes may keep fp32
    int8_smooth_alphas: tuple[float, ...] = ()  # a smoothed variant's migration strength α; several: each is
    # quantised and the graph that follows fp32 best on held-out calibration inputs ships; (): the variant's
    # (``Int8Variant.smooth``, or its ``smooth_choices`` where held-out inputs are at hand)
    quantize_embeddings: bool = True      # int8 embedding tables too (QEmbedLayerNormalization / Gather)
    seq_len: int | None = None            # nominal parity length; None: the task's max_length (or 128)
    task: str | None = None               # overrides the task recorded in the model directory
    task_kind: str | None = None          # "single", "pair" or "qa"; None: recorded, else from the task name
    fp32_atol: float = FP32_ATOL
    int8_min_agreement: float = INT8_MIN_AGREEMENT
    profile: str | None = None            # device profile id or file recorded in the artifact (profile.yaml)

    def __post_init__(self) -> None:
        if isinstance(self.opset, bool) or not isinstance(self.opset, int):
            raise InputError(f"opset must be an int, got {self.opset!r}")
        if self.quantize not in QUANTIZE_CHOICES:
            raise InputError(f"quantize must be None or 'int8', got {self.quantize!r}")
        if self.int8_preset is not None and self.int8_preset not in PRESETS:
            raise InputError(f"unknown int8 preset {self.int8_preset!r}; choose one of: {', '.join(PRESETS)}")
        if self.int8_variant is not None:
            get_variant(self.int8_variant)
        if not isinstance(self.int8_fp32_nodes, tuple) or not all(isinstance(n, str) and n
                                                                 for n in self.int8_fp32_nodes):
            raise InputError(f"int8_fp32_nodes must be a tuple of node names, got {self.int8_fp32_nodes!r}")
        if self.int8_fp32_nodes and self.quantize != "int8":
            raise InputError("int8 fp32 nodes name what int8 leaves fp32; add --quantize int8 or drop them")
        check_share(self.int8_fp32_share)
        if not isinstance(self.int8_smooth_alphas, tuple):
            raise InputError(f"int8_smooth_alphas must be a tuple of numbers, got {self.int8_smooth_alphas!r}")
        for alpha in self.int8_smooth_alphas:
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 1.0:
                raise InputError(f"int8 smooth alpha {alpha!r} is out of range; choose a migration strength in "
                                 "(0, 1], e.g. 0.9")
        if len(set(self.int8_smooth_alphas)) < len(self.int8_smooth_alphas):
            raise InputError(f"int8 smooth alphas {list(self.int8_smooth_alphas)} name one twice; list each once")
        if self.int8_smooth_alphas and self.quantize != "int8":
            raise InputError("an int8 smooth alpha sets how int8 smooths; add --quantize int8 or drop it")
        if isinstance(self.calibration_samples, bool) or not isinstance(self.calibration_samples, int) \
                or self.calibration_samples < 1:
            raise InputError(f"calibration_samples must be a whole number >= 1, got {self.calibration_samples!r}")
        cal.SELECTIONS.lookup(self.calibration_selection)
        if self.seq_len is not None and (isinstance(self.seq_len, bool) or self.seq_len <= 0):
            raise InputError(f"seq_len must be a positive int, got {self.seq_len!r}")
        if self.task_kind not in (None, *TASK_KINDS):
            raise InputError(f"task_kind must be one of {', '.join(TASK_KINDS)}, got {self.task_kind!r}")
        if not self.fp32_atol > 0:
            raise InputError(f"fp32_atol must be > 0, got {self.fp32_atol}")
        if not 0.0 <= self.int8_min_agreement <= 1.0:
            raise InputError(f"int8_min_agreement must be in [0, 1], got {self.int8_min_agreement}")


@dataclass(frozen=True)
class TaskInfo:
    """What the manifest says about the task the model solves."""

    task: str
    task_kind: str
    label_names: tuple[str, ...]
    max_length: int
    doc_stride: int | None = None  # qa: overlap of context windows the model was trained with


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` wrote and the numbers that let it keep each file."""

    out_dir: Path
    models: dict[str, str]                 # precision -> file name
    sha256: dict[str, str]                 # file name -> hex digest
    sizes: dict[str, int]                  # file name -> bytes
    parity: dict[str, Any]                 # precision -> ParityReport
    op_counts: dict[str, dict[str, int]]   # precision -> op type -> count
    attention_num_heads: tuple[int | None, ...]  # per layer, fp32 graph (None: not fused / no heads)
    encoder_params_onnx: int
    encoder_params_expected: int
    opset: int
    optimized: bool
    quantize: str | None
    task: TaskInfo
    manifest: str | None = None            # path of sensibert.json when written
    notes: tuple[str, ...] = field(default_factory=tuple)
    int8: dict[str, Any] | None = None     # the int8 variant shipped: variant, preset, how it was chosen

    def path(self, precision: str = "fp32") -> Path:
        """Return the file of one precision."""
        return self.out_dir / self.models[precision]

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "models": dict(self.models), "sha256": dict(self.sha256),
                "sizes": dict(self.sizes), "parity": {k: v.to_dict() for k, v in self.parity.items()},
                "op_counts": self.op_counts, "attention_num_heads": list(self.attention_num_heads),
                "encoder_params_onnx": self.encoder_params_onnx,
                "encoder_params_expected": self.encoder_params_expected, "opset": self.opset,
                "optimized": self.optimized, "quantize": self.quantize, "task": dict(self.task.__dict__),
                "manifest": self.manifest, "notes": list(self.notes), "int8": self.int8}


# ---------------------------------------------------------------- checks before any work

def opset_range() -> tuple[int, int]:
    """Return the opsets this installation can write: ours and optimum's floor, onnx's and torch's ceiling."""
    import onnx.defs
    from torch.onnx import _constants

    # optimum.exporters.onnx.export goes through torch's TorchScript exporter (dynamo=False).
    ceiling = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET)
    return MIN_OPSET, min(onnx.defs.onnx_opset_version(), ceiling)


def check_opset(opset: int) -> None:
    low, high = opset_range()
    if not low <= opset <= high:
        raise InputError(f"opset {opset} cannot be written here (this installation writes {low}..{high}: "
                         f"onnx {_version('onnx')}, torch {_version('torch')}); pass --opset {DEFAULT_OPSET}")


def _version(name: str) -> str:
    return package_versions().get(name, "?")


def _read_loose_json(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _find_key(doc: dict[str, Any], key: str) -> Any:
    """Return ``doc[key]`` or the first ``doc[section][key]`` one level down."""
    if doc.get(key) not in (None, ""):
        return doc[key]
    for value in doc.values():
        if isinstance(value, dict) and value.get(key) not in (None, ""):
            return value[key]
    return None


def task_info(model_dir: Path, model_config: Any, config: ExportConfig) -> TaskInfo:
    """Return the task of the model: flags first, then what fine-tuning recorded in the directory."""
    recorded: dict[str, Any] = {}
    for name in ("metrics.json", "plan.json", "shrink.json"):
        doc = _read_loose_json(model_dir / name)
        for key in ("task", "task_kind", "max_length", "doc_stride"):
            if key not in recorded and _find_key(doc, key) is not None:
                recorded[key] = _find_key(doc, key)
    task = config.task or recorded.get("task")
    if not task or not isinstance(task, str):
        raise InputError(f"{model_dir}: no task recorded (metrics.json / plan.json); "
                         "pass --task NAME, e.g. --task sst2")
    kind = config.task_kind or recorded.get("task_kind") or _kind_of(task)
    if kind not in TASK_KINDS:
        raise InputError(f"{model_dir}: recorded task_kind {kind!r} is not one of {', '.join(TASK_KINDS)}; "
                         "pass --task-kind")
    max_length = config.seq_len or recorded.get("max_length") or DEFAULT_MAX_LENGTH
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise InputError(f"{model_dir}: recorded max_length {max_length!r} is not a positive int; pass --seq-len")
    id2label = getattr(model_config, "id2label", None) or {}
    labels = tuple(str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(model_config.num_labels))
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise InputError(f"{model_dir}: labels {list(labels)} are not two or more distinct names; sensibert "
                         "artifacts are classifiers or span (start, end) heads; fix id2label in config.json")
    stride = recorded.get("doc_stride") if kind == "qa" else None
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride < max_length):
        raise InputError(f"{model_dir}: recorded doc_stride {stride!r} is not in [0, max_length); re-run fine-tuning")
    if kind == "qa" and stride is None:
        from deploy.qa import default_doc_stride

        stride = default_doc_stride(int(max_length))
    return TaskInfo(task=task, task_kind=kind, label_names=labels, max_length=int(max_length), doc_stride=stride)


def _kind_of(task: str) -> str:
    """Return single or pair for a task name: the task registry first, then GLUE names we know."""
    try:
        from toolchain.tasks import get_task

        return get_task(task).kind
    except (ImportError, InputError):
        name = task.lower().replace("_", "-")
        return "qa" if name in QA_TASKS else "pair" if name in PAIR_TASKS else "single"


def _check_out_dir(model_dir: Path, out_dir: Path) -> None:
    if out_dir.resolve() == model_dir.resolve():
        raise InputError(f"--out {out_dir} is the model directory itself; pass a new directory")
    ours = out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / RECORD_NAME).is_file())
    if out_dir.exists() and not ours:
        raise InputError(f"{out_dir} exists and is not an earlier export; pass a new or empty directory")


# ---------------------------------------------------------------- the steps

def onnx_config_for(model: Any) -> Any:
    """Return optimum's OnnxConfig for our classifier or QA model (registered for model_type sensibert)."""
    from optimum.exporters.tasks import TasksManager

    _register_onnx_config()
    task = "question-answering" if hasattr(model, "qa_outputs") else "text-classification"
    constructor = TasksManager.get_exporter_config_constructor(
        exporter="onnx", model_type=model.config.model_type, task=task, library_name="transformers")
    return constructor(model.config)


_REGISTERED = False


def _register_onnx_config() -> None:
    """Register BertOnnxConfig's inputs and outputs for model_type sensibert (once)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from optimum.exporters.onnx.model_configs import BertOnnxConfig
    from optimum.exporters.tasks import TasksManager

    register = TasksManager.create_register("onnx", overwrite_existing=True)

    @register("sensibert", "feature-extraction", "text-classification", "question-answering")
    class SensiBertOnnxConfig(BertOnnxConfig):
        """BERT's inputs (input_ids, attention_mask, token_type_ids, dynamic batch and sequence); no
        token_type_ids where the family has at most one token type (RoBERTa, DistilBERT), as
        optimum's own configs for those families."""

        @property
        def inputs(self) -> dict[str, dict[int, str]]:
            inputs = super().inputs
            if getattr(self._config, "type_vocab_size", 2) <= 1:
                inputs.pop("token_type_ids", None)
            return inputs

    _REGISTERED = True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence tracer warnings, ORT's 'input hidden size is not same as weight' for trimmed layers,
    and quantize_static's advice, which it logs on the root logger."""
    names = ("onnxruntime.transformers", "fusion_attention", "optimum", "onnxruntime.quantization", "")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_raw(model: Any, path: Path, opset: int) -> None:
    """Write the plain fp32 graph with dynamic batch and sequence axes."""
    # optimum's main_export / onnx_export_from_model refuse a model class outside transformers
    # (they infer the library from the class's module), so the lower-level export is used.
    from optimum.exporters.onnx import export as optimum_export

    with _quiet():
        optimum_export(model, onnx_config_for(model), path, opset=opset)


def _optimize(src: Path, dst: Path) -> None:
    """Fuse the graph with onnxruntime's transformer optimizer, head counts read per layer."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    # Keep the raw [B, S] mask: the default (sequence lengths) assumes right padding, the raw
    # mask computes exactly what PyTorch computes for any mask.
    options.use_raw_attention_mask(True)
    # Residual adds and LayerNorms stay standard ops (Add + LayerNormalization, opset 17):
    # onnxruntime's SkipLayerNormalization kernel is 8× slower on this model's shapes
    # (deploy.session.DISABLED_OPTIMIZERS keeps the runtime from re-fusing them), and every
    # runtime knows LayerNormalization.
    options.enable_skip_layer_norm = False
    with _quiet():
        # num_heads=0, hidden_size=0: detect per layer from the Reshape constants. optimum's
        # ORTOptimizer passes the global config values instead (research/anchors.md §0 item 4).
        # opt_level=0: Python fusions only, no hardware-specific ORT rewrites baked into the file.
        optimized = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0,
                                   optimization_options=options, opt_level=0)
        optimized.save_model_to_file(str(dst))


EMBEDDING_OPS = ("EmbedLayerNormalization", "Gather")


def quantizable_nodes(model: Any, embeddings: bool = False, ops: Sequence[str] = DYNAMIC_OPS) -> list[str]:
    """Return the names of the nodes int8 would quantise: the weighted nodes of ``ops`` (MatMuls with
    a weight, and the fused Attention where the variant quantises it); with ``embeddings`` also the
    embedding lookups (the fused EmbedLayerNormalization, or a Gather from a 2-D table), which hold
    most of a trimmed model's bytes."""
    inits = {i.name: i for i in model.graph.initializer}
    weighted = {n.name for n in mp.weighted_nodes(model, ops)}

    def is_table(name: str) -> bool:
        return name in inits and len(inits[name].dims) == 2

    return [n.name for n in model.graph.node
            if n.name in weighted
            or (embeddings and (n.op_type == "EmbedLayerNormalization"
                                or (n.op_type == "Gather" and is_table(n.input[0]))))]


def int8_choice(config: ExportConfig, profile: Any = None, calibrated: bool = False
                ) -> tuple[Int8Variant, str, dict[str, str]]:
    """Return (variant, preset, where each came from): the flag, else the device profile
    (its ``runtime.int8_variant``; its ISA and features for the preset), else the defaults
    (``deploy.int8.default_variant``: dynamic-smooth when ``calibrated`` inputs are at hand); a
    smoothed variant at ``int8_smooth_alphas`` where they are set (several: its ``smooth_choices``,
    which the export tries each of)."""
    hw = getattr(profile, "hardware", None)
    if config.int8_variant is not None:
        variant, v_from = config.int8_variant, "flag"
    elif profile is not None and profile.runtime.int8_variant is not None:
        variant, v_from = profile.runtime.int8_variant, f"profile {profile.id}"
    else:
        variant, v_from = default_variant(calibrated), "default"
    if config.int8_preset is not None:
        preset, p_from = config.int8_preset, "flag"
        if hw is not None:
            check_preset(preset, hw.isa, hw.features)
    elif hw is not None:
        preset, p_from = preset_for(hw.isa, hw.features), f"profile {profile.id} ({hw.isa})"
    else:
        preset, p_from = DEFAULT_PRESET, "default (no profile)"
    chosen = get_variant(variant)
    alphas = config.int8_smooth_alphas
    if alphas:  # checked here, before any work: the variant may come from a profile
        smoothed = [n for n, v in INT8_VARIANTS.items() if v.smooth]
        if not chosen.smooth:
            raise InputError(f"an int8 smooth alpha sets how strongly a smoothed variant migrates ranges, and "
                             f"{chosen.name} smooths nothing; choose --int8-variant {' or '.join(smoothed)}, or "
                             "drop the alpha")
        if len(alphas) > 1 and chosen.mixed:
            raise InputError(f"{chosen.name} probes one smoothed graph, and {len(alphas)} alphas were given; give "
                             f"it one, or let --int8-variant "
                             f"{' or '.join(n for n in smoothed if not INT8_VARIANTS[n].mixed)} choose among them")
        chosen = replace(chosen, smooth=alphas[0], smooth_choices=alphas if len(alphas) > 1 else ())
    return chosen, preset, {"variant": v_from, "preset": p_from}


def _checkable_alphas(variant: Int8Variant, config: ExportConfig, inputs: int) -> tuple[Int8Variant, list[str]]:
    """Return the variant with the α choices ``inputs`` calibration inputs can check, and the notes
    the artifact keeps. Choosing needs inputs beyond the ones that calibrate: α named on the command
    line without them is an error; the default's choices fall back to its first α, with a note."""
    if len(variant.smooth_choices) < 2 or inputs > config.calibration_samples:
        return variant, []
    if config.int8_smooth_alphas:
        raise InputError(f"choosing among {len(variant.smooth_choices)} smooth alphas needs held-out inputs "
                         f"beyond the {config.calibration_samples} that calibrate, and the calibration data "
                         f"has {inputs}; pass more lines (or fewer --calibration-samples), or give one alpha")
    note = (f"int8 smoothed at α {variant.smooth:g} without choosing among "
            f"{', '.join(f'{a:g}' for a in variant.smooth_choices)}: no calibration input beyond the "
            f"{config.calibration_samples} that calibrate to check them on")
    return replace(variant, smooth_choices=()), [note]


def choose_calibration(tokenizer: Any, items: list, max_length: int, config: ExportConfig
                       ) -> tuple[list[dict[str, Any]], list]:
    """Return (the calibration feeds ``config.calibration_selection`` picks from the first inputs,
    the inputs it left, in order: held out for the mixed variant's check)."""
    pool = items[:cal.pool_size(config.calibration_selection, config.calibration_samples)]
    feeds = calibration_feeds(tokenizer, pool, max_length, len(pool))
    chosen = cal.select(config.calibration_selection, [f["input_ids"].shape[1] for f in feeds],
                        config.calibration_samples)
    taken = set(chosen)
    return [feeds[i] for i in chosen], [x for i, x in enumerate(pool) if i not in taken] + items[len(pool):]


def calibration_feeds(tokenizer: Any, items: list, max_length: int, limit: int) -> list[dict[str, Any]]:
    """Return batch-1 token arrays of the first ``limit`` calibration inputs, each at its own length
    (what the deployed model sees), truncated to ``max_length``."""
    import numpy as np

    feeds = []
    for item in items[:limit]:
        a, b = (item, None) if isinstance(item, str) else (item[0], item[1])
        enc = tokenizer(a, b, truncation=True, max_length=max_length, return_tensors="np")
        feeds.append({k: np.asarray(v, dtype=np.int64) for k, v in enc.items()})
    return feeds


def _quantize(src: Path, dst: Path, work: Path, config: ExportConfig, variant: Int8Variant, preset: str,
              feeds: list[dict[str, Any]] | None = None, progress: bool = False,
              validation: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the int8 graph of ``src``: weights of MatMul and Attention nodes (and the embedding
    tables unless ``quantize_embeddings`` is off), dynamic or, for a static variant, with the
    MatMuls' activation ranges calibrated on ``feeds``. The nodes ``config.int8_fp32_nodes`` names
    stay fp32; the mixed variant, named none, measures which to keep (toolchain/mixed_precision.py)
    and keeps them only where, on the ``validation`` feeds (other training inputs), the mixed graph
    follows fp32 better than plain per-channel does; a smoothed variant given several α ships the α
    whose graph follows fp32 best on those inputs. Return what the artifact records of it: the fp32
    nodes and, when measured, the probes, the smoothing and the checks."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    model = onnx.load(str(src))
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"sensibert_node_{i}"
    candidates = quantizable_nodes(model)
    if not candidates:  # embeddings alone are no reason to quantise
        raise InputError(f"{src.name} has no MatMul with a weight nor Attention node to quantise (every head and "
                         "neuron was removed); export without --quantize")
    mp.check_nodes(config.int8_fp32_nodes, candidates)
    work.mkdir(parents=True, exist_ok=True)
    staged = work / "model.onnx"
    # the preset fixes the weight and activation types for the ISA (optimum's definitions)
    qconfig = getattr(AutoQuantizationConfig, preset)(is_static=variant.static, per_channel=variant.per_channel)
    keep, record, produced = tuple(config.int8_fp32_nodes), {}, None

    def plain(graph: Path, at: Path) -> Path:  # the variant's int8 graph of ``graph``, no probing
        if variant.static:
            return _quantize_static(graph, at, model, qconfig, variant.weighted_ops, feeds or [],
                                    config.quantize_embeddings)
        return _quantize_dynamic(graph, at, model, qconfig, variant.weighted_ops, config.quantize_embeddings, keep)

    with _quiet():
        # onnx shape inference knows no com.microsoft ops: without types on the outputs of fused
        # nodes the quantiser stops ("Unable to find data type"). ORT's symbolic shape inference
        # knows them, so types are added first.
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
        onnx.save(inferred if inferred is not None else model, str(staged))
        if variant.smooth:  # migrate the loud channels' range into the weights first (fp32, same function)
            staged, produced, record = _smoothed(src, staged, work, variant, feeds or [], validation or [], plain,
                                                 progress)
        if variant.mixed and not keep:
            from toolchain.progress import CountBar

            def quantize(fp32_nodes: Any, out: Path) -> None:
                shutil.move(str(_quantize_dynamic(staged, work / "probe-q", model, qconfig, variant.weighted_ops,
                                                  config.quantize_embeddings, fp32_nodes)), str(out))

            with CountBar("int8 probes", unit="node", enabled=progress) as bar:
                base, probes = mp.probe(src, quantize, mp.node_costs(model, candidates),
                                        (feeds or [])[:mp.PROBE_INPUTS], work / "probe", bar)
            keep = mp.choose(probes, config.int8_fp32_share)
            record |= {"fp32_share": config.int8_fp32_share, "probe_inputs": len(feeds[:mp.PROBE_INPUTS]),
                       "error_all_int8": base, "probes": [p.to_dict() for p in probes], "validation": None}
            if keep and validation:  # both graphs are made for the check: the one it keeps ships
                graphs = {"per-channel": work / "per-channel.onnx", "mixed": work / "mixed.onnx"}
                quantize((), graphs["per-channel"])
                quantize(keep, graphs["mixed"])
                record["validation"] = mp.validate(src, graphs["per-channel"], graphs["mixed"], validation)
                record["validation"]["probes_chose"] = list(keep)
                kept = record["validation"]["kept_mixed"]
                keep, produced = (keep, graphs["mixed"]) if kept else ((), graphs["per-channel"])
        if produced is None:
            produced = plain(staged, work)
    shutil.move(str(produced), str(dst))
    return {"fp32_nodes": list(keep), **record}


def _smoothed(src: Path, staged: Path, work: Path, variant: Int8Variant, feeds: list[dict[str, Any]],
              validation: list[dict[str, Any]], plain: Any, progress: bool = False
              ) -> tuple[Path, Path | None, dict[str, Any]]:
    """Smooth ``staged`` at the variant's α, or at each of its ``smooth_choices`` when it has
    several: then each is quantised (``plain``) and the graph that follows fp32 best on the
    ``validation`` inputs ships (a bar counts the graphs made and run). Return (the smoothed fp32
    graph, its int8 graph where one was already made, what the artifact records)."""
    import onnx

    from toolchain.smooth_quant import activation_maxima, smooth, weighted_matmuls

    alphas = variant.smooth_choices if len(variant.smooth_choices) > 1 else (variant.smooth,)
    maxima = None  # the inputs of the nodes the variant quantises: with several α, measured once for all
    if len(alphas) > 1 and feeds:
        model = onnx.load(str(staged))
        maxima = activation_maxima(model, list(weighted_matmuls(model, variant.weighted_ops)), feeds)
    graphs = {}
    for alpha in alphas:
        at = work / f"alpha-{alpha:g}"
        at.mkdir(parents=True, exist_ok=True)
        graphs[f"{alpha:g}"] = (at / "smoothed.onnx",
                                smooth(staged, at / "smoothed.onnx", feeds, alpha, variant.weighted_ops, maxima))
    if len(graphs) == 1:
        (path, smoothing), = graphs.values()
        return path, None, {"smoothing": smoothing}
    from toolchain.progress import CountBar

    quantized, n = {}, len(graphs)
    with CountBar(f"int8 α choice ({len(validation)} held-out inputs)", unit="graph", enabled=progress) as bar:
        for a, (path, _) in graphs.items():  # quantise each, then run fp32 and each on the held-out inputs
            quantized[a] = plain(path, path.parent)
            bar(len(quantized), 2 * n + 1)
        scores = mp.compare(src, quantized, validation, lambda done, total: bar(n + done, n + total))
    best = mp.closest(scores)
    record = {"smoothing": graphs[best][1],
              "alpha_check": {"inputs": len(validation), "alphas": [float(a) for a in graphs], "scores": scores,
                              "chosen": float(best)}}
    return graphs[best][0], quantized[best], record


def _quantize_dynamic(staged: Path, work: Path, model: Any, qconfig: Any, ops: Sequence[str], embeddings: bool,
                      keep_fp32: Any = ()) -> Path:
    """Dynamic int8 (optimum's ORTQuantizer) of the weighted nodes of ``ops``: weights int8 offline,
    activations at run time; the nodes of ``keep_fp32`` stay fp32. Activation-by-activation MatMuls
    (scores, context) of an unfused graph stay fp32."""
    import onnx
    from optimum.onnxruntime import ORTQuantizer

    nodes = [n for n in quantizable_nodes(model, embeddings, ops) if n not in set(keep_fp32)]
    operators = list(ops) + (list(EMBEDDING_OPS) if embeddings else [])
    qconfig = replace(qconfig, nodes_to_quantize=nodes, operators_to_quantize=operators)
    try:
        ORTQuantizer(staged, config=None).quantize(qconfig, work / "q", file_suffix="int8")
        return work / "q" / f"{staged.stem}_int8.onnx"  # optimum names the output after its input
    except RuntimeError as exc:
        if "Unable to find data type" not in str(exc):
            raise
    # Fallback only where shape inference still left a fused output untyped: ORTQuantizer
    # cannot pass ORT's DefaultTensorType option, quantize_dynamic can.
    from onnxruntime.quantization import quantize_dynamic

    produced = work / "q_fallback.onnx"
    quantize_dynamic(str(staged), str(produced), per_channel=qconfig.per_channel, reduce_range=qconfig.reduce_range,
                     weight_type=qconfig.weights_dtype, nodes_to_quantize=nodes, op_types_to_quantize=operators,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return produced


def _quantize_static(staged: Path, work: Path, model: Any, qconfig: Any, ops: Sequence[str],
                     feeds: list[dict[str, Any]], embeddings: bool) -> Path:
    """Static QDQ int8 (onnxruntime's quantize_static, min-max calibration on ``feeds``) of the
    weighted nodes of ``ops``; then the embedding tables dynamically, as the dynamic variants store them."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    names = {i.name for i in model.graph.input}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{k: v for k, v in f.items() if k in names} for f in feeds])

        def get_next(self):
            return next(self.items, None)

    produced = work / "q_static.onnx"
    quantize_static(str(staged), str(produced), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=qconfig.per_channel, reduce_range=qconfig.reduce_range,
                    activation_type=qconfig.activations_dtype, weight_type=qconfig.weights_dtype,
                    op_types_to_quantize=list(ops), nodes_to_quantize=quantizable_nodes(model, ops=ops),
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                                   "ActivationSymmetric": qconfig.activations_symmetric,
                                   "WeightSymmetric": qconfig.weights_symmetric})
    tables = [n for n in quantizable_nodes(onnx.load(str(produced)), embeddings=True) if embeddings and
              n in {m.name for m in model.graph.node if m.op_type in EMBEDDING_OPS}]
    if not tables:
        return produced
    both = work / "q_static_tables.onnx"
    quantize_dynamic(str(produced), str(both), weight_type=qconfig.weights_dtype, nodes_to_quantize=tables,
                     op_types_to_quantize=list(EMBEDDING_OPS),
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return both


def _finalise(path: Path, meta: dict[str, Any]) -> None:
    """Stamp our metadata into an ONNX file and drop inferred value_info (sizes only)."""
    import onnx

    from toolchain.inspect_artifact import stamp_metadata

    model = onnx.load(str(path))
    del model.graph.value_info[:]
    stamp_metadata(model, meta)
    onnx.save(model, str(path))


def _structure_failures(name: str, info: Any, heads: tuple[int, ...], ffn: tuple[int, ...], expected: int,
                        fp32: bool) -> list[str]:
    """Return what is wrong with a graph's shapes: per-layer units, fused head counts, parameters.
    A removed layer (no head, no neuron) must be absent from the graph."""
    out = []
    kept = graph_layers(heads, ffn)
    if info.heads != tuple(h for _, h, _ in kept) or info.ffn != tuple(f for _, _, f in kept):
        out.append(f"{name}: graph has heads {list(info.heads)} and FFN {list(info.ffn)}, the model "
                   f"{list(heads)} and {list(ffn)}" + (" (its empty layers removed)" if len(kept) < len(heads) else ""))
    for layer, (i, h, _) in zip(info.layers, kept):
        if layer.attention_num_heads is not None and layer.attention_num_heads != h:
            out.append(f"{name}: layer {i} Attention num_heads {layer.attention_num_heads} but the layer has {h} heads")
    if fp32 and info.encoder_params != expected:
        out.append(f"{name}: encoder initializers hold {info.encoder_params} parameters, costs.py expects {expected}")
    return out


def export(model_dir: str | Path, out_dir: str | Path, config: ExportConfig = ExportConfig(),
           calibration: list | None = None, progress: bool = False) -> ExportResult:
    """Export, check and write the ONNX artifact folder of a classifier directory; return the result.

    ``calibration`` (texts, or (text, text) pairs for pair and QA tasks, or raw input lines as
    bytes) feeds a static int8 variant's range calibration; the dynamic variants need none.
    ``progress`` shows one bar over the export's steps (with an ETA), for the CLI and ``run``.

    Example:
        >>> export("out/small", "out/onnx", ExportConfig(optimize=True, quantize="int8", task="sst2"))  # doctest: +SKIP
    """
    import onnx
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    import toolchain.modeling  # noqa: F401  registers sensibert with the Auto classes
    from toolchain.costs import encoder_params, flops_polynomial, shape_from_config
    from toolchain.families import canonical_view
    from toolchain.inspect_artifact import analyse_onnx
    from toolchain.models import head_kind, load_tokenizer, model_hash, read_model_config, resolve_model_dir
    from toolchain.parity import check_batches, check_onnx, raise_on_failure, torch_outputs
    from toolchain.progress import StepBar

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    resolve_model_dir(str(model_dir))
    check_opset(config.opset)
    _check_out_dir(model_dir, out_dir)
    profile = None
    if config.profile:
        from deploy.profile import load_profile

        profile = load_profile(config.profile)
    variant, preset, chosen = int8_choice(config, profile, calibrated=bool(calibration))
    static = config.quantize == "int8" and variant.calibrated
    if static and not calibration:
        needs = ("calibrates activation ranges" if variant.static else "measures each matmul on task inputs"
                 if variant.mixed else "smooths by activation ranges measured on task inputs")
        raise InputError(f"int8 variant {variant.name} {needs} and got no calibration inputs; pass --calibration-data FILE (one input per line, as "
                         "sensibert-deploy predict reads them), or use sensibert run, which takes them from the "
                         "task's training split")
    if config.int8_fp32_nodes and variant.static:
        raise InputError(f"int8 fp32 nodes work with the dynamic variants; {variant.name} is static: choose "
                         "--int8-variant dynamic-per-channel (or mixed)")
    archs = read_model_config(model_dir).get("architectures") or []
    kind = head_kind(model_dir)
    qa = kind == "qa"
    if kind is None:
        raise InputError(f"{model_dir}: not a sequence classifier nor a QA model (architectures {archs}); export "
                         "the directory written by sensibert shrink")
    auto = AutoModelForQuestionAnswering if qa else AutoModelForSequenceClassification
    model = auto.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    tokenizer = load_tokenizer(model_dir)
    task = task_info(model_dir, model.config, config)
    if static and all(isinstance(c, bytes) for c in calibration):
        from deploy.predict import usable_items  # raw lines: read as sensibert-deploy predict reads them

        calibration = usable_items(calibration, task.task_kind, "calibration data")
    variant, notes = _checkable_alphas(variant, config, len(calibration)) if static else (variant, [])
    shape = shape_from_config(canonical_view(model.config))
    if config.quantize == "int8" and sum(shape.heads) + sum(shape.ffn) == 0:
        raise InputError(f"{model_dir}: every head and neuron was removed, so the encoder has no matmul to "
                         "quantise; export without --quantize")
    expected = encoder_params(shape)
    meta = {"model_type": model.config.model_type, "hidden": shape.hidden, "head_size": shape.head_size,
            "heads": list(shape.heads), "ffn": list(shape.ffn), "vocab_size": shape.vocab_size,
            "max_positions": shape.max_positions, "type_vocab_size": shape.type_vocab_size,
            "num_labels": shape.num_labels, "source_model_hash": model_hash(model_dir),
            "task": task.task, "optimized": config.optimize}

    batches = check_batches(tokenizer, task.max_length, shape.max_positions)
    references = [torch_outputs(model, b) for b in batches]
    steps = ["export", *(["fuse"] if config.optimize else []), "fp32 parity",
             *(["quantise", "int8 parity"] if config.quantize == "int8" else []), "write"]
    bar = StepBar("export", steps, progress)

    with atomic_path(out_dir, is_dir=True) as tmp, bar:
        raw = tmp / ".raw.onnx"
        _export_raw(model, raw, config.opset)
        bar.step()
        fp32 = tmp / FP32_NAME
        if config.optimize:
            _optimize(raw, fp32)
            raw.unlink()
            bar.step()
        else:
            raw.rename(fp32)
        _finalise(fp32, {**meta, "precision": "fp32"})
        reports = {"fp32": check_onnx(fp32, references, batches, precision="fp32", atol=config.fp32_atol,
                                      artifact=FP32_NAME)}
        info = {"fp32": analyse_onnx(onnx.load(str(fp32)))}
        structure = _structure_failures(FP32_NAME, info["fp32"], shape.heads, shape.ffn, expected, fp32=True)
        models = {"fp32": FP32_NAME}
        if config.quantize == "int8":
            int8 = tmp / INT8_NAME
            feeds, rest = choose_calibration(tokenizer, calibration, task.max_length, config) if static else (None, [])
            checks = (variant.mixed and not config.int8_fp32_nodes  # a named plan ships as named
                      or len(variant.smooth_choices) > 1)
            held_out = calibration_feeds(tokenizer, rest, task.max_length, mp.VALIDATION_INPUTS) \
                if checks and static else None
            bar.step()
            mixed = _quantize(fp32, int8, tmp / ".quantize", config, variant, preset, feeds, progress, held_out)
            shutil.rmtree(tmp / ".quantize", ignore_errors=True)
            _finalise(int8, {**meta, "precision": "int8"})
            bar.step()
            reports["int8"] = check_onnx(int8, references, batches, precision="int8",
                                         min_agreement=config.int8_min_agreement, artifact=INT8_NAME)
            info["int8"] = analyse_onnx(onnx.load(str(int8)))
            structure += _structure_failures(INT8_NAME, info["int8"], shape.heads, shape.ffn, expected, fp32=False)
            models["int8"] = INT8_NAME
        raise_on_failure(reports.values(), extra=structure,
                         fix="nothing was written; re-run without --optimize to isolate the fusion, "
                             "or report the model and command")
        bar.step()

        # The Hugging Face folder layout: optimum's ORTModelFor... and transformers' pipeline load it
        # as it is (config.json + tokenizer files); deploy/ reads tokenizer.json and sensibert.json.
        tokenizer.save_pretrained(str(tmp))
        hf_config(model.config, task).to_json_file(str(tmp / "config.json"))
        with_heads = sum(1 for h in shape.heads if h > 0)
        if config.optimize and info["fp32"].op_counts["Attention"] < with_heads:
            notes.append(f"only {info['fp32'].op_counts['Attention']} of {with_heads} attention layers were fused")
        files = {p.name: p for p in sorted(tmp.iterdir()) if p.is_file() and not p.name.startswith(".")}
        result = ExportResult(
            out_dir=out_dir, models=models, sha256={n: sha256_file(p) for n, p in files.items()},
            sizes={n: p.stat().st_size for n, p in files.items()}, parity=reports,
            op_counts={k: v.op_counts for k, v in info.items()},
            attention_num_heads=tuple(layer.attention_num_heads for layer in info["fp32"].layers),
            encoder_params_onnx=info["fp32"].encoder_params, encoder_params_expected=expected,
            opset=config.opset, optimized=config.optimize, quantize=config.quantize, task=task,
            notes=tuple(notes), int8=None if config.quantize != "int8" else {
                "variant": variant.name, "preset": preset, "static": variant.static,
                "per_channel": variant.per_channel, "chosen_by": chosen,
                "calibration_samples": len(feeds) if feeds else 0,
                **({"calibration_selection": config.calibration_selection,
                    "calibration_tokens": [min(f["input_ids"].shape[1] for f in feeds),
                                           max(f["input_ids"].shape[1] for f in feeds)]} if feeds else {}),
                **mixed})
        write_json(tmp / RECORD_NAME, EXPORT_SCHEMA, EXPORT_VERSION,
                   {**result.to_dict(), "source": str(model_dir.resolve()), "config": dict(config.__dict__),
                    "package_versions": package_versions()})
        extra: dict[str, Any] = {"flops": flops_polynomial(shape)}
        if task.doc_stride is not None:
            extra["doc_stride"] = task.doc_stride
        if result.int8 is not None:
            extra["int8"] = {k: result.int8[k] for k in ("variant", "preset")}
        manifest = _write_manifest(tmp, out_dir, task, models, profile, extra)
        bar.step()
    return replace(result, manifest=manifest)


HF_ARCHITECTURES = {"qa": "BertForQuestionAnswering"}
SENSIBERT_CONFIG_FIELDS = ("heads_per_layer", "ffn_per_layer")
FAMILY_FIELDS = ("family", "pooler_act", "position_offset", "embedding_size")  # modeling.SensiBertConfig's


def hf_config(model_config: Any, task: TaskInfo) -> Any:
    """Return the artifact's config.json as a plain BertConfig, so loaders that know no sensibert
    model type accept it: labels, the task's head, and the per-layer shapes under ``sensibert``
    (an ONNX runtime reads shapes from the graph, never from this file)."""
    from transformers import BertConfig

    body = {k: v for k, v in model_config.to_dict().items()
            if k not in ("model_type", "architectures", "transformers_version", *SENSIBERT_CONFIG_FIELDS,
                         *FAMILY_FIELDS)}
    config = BertConfig.from_dict(body)
    config.architectures = [HF_ARCHITECTURES.get(task.task_kind, "BertForSequenceClassification")]
    config.id2label = dict(enumerate(task.label_names))  # the manifest's labels, as deploy/ names them
    config.label2id = {name: i for i, name in config.id2label.items()}
    config.sensibert = {"task": task.task, "task_kind": task.task_kind, "max_length": task.max_length,
                        **{k: getattr(model_config, k) for k in FAMILY_FIELDS if hasattr(model_config, k)},
                        **{k: list(getattr(model_config, k)) for k in SENSIBERT_CONFIG_FIELDS
                           if getattr(model_config, k, None) is not None}}
    return config


def _write_manifest(tmp: Path, out_dir: Path, task: TaskInfo, models: dict[str, str],
                    profile: Any, extra: dict[str, Any]) -> str:
    """Write sensibert.json (hashes of every file, task, labels, the device profile used, FLOPs,
    the int8 variant, and for QA the window stride)."""
    from deploy.manifest import write_manifest

    write_manifest(tmp, task=task.task, task_kind=task.task_kind, label_names=list(task.label_names),
                   max_length=task.max_length, models=dict(models), profile=profile, extra=extra)
    return str(out_dir / "sensibert.json")
