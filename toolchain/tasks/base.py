"""The tasks layer's shared part: the one task registry, what every task kind provides, and the
GLUE TSV reading and carving the classification kinds share.

A task is a ``TaskSpec`` (files, text fields, labels) whose ``handler`` is a ``TaskKind``: the
object of one kind module (``single``, ``pair``, ``qa``) that owns that kind's readers,
carving keys, features, metric and what the exporter and ``deploy/`` need to know (the
manifest's ``task_kind``, the model's outputs and how they are read). Kind modules add their
tasks with ``register_task``; everything else finds a task by name with ``get_task``.

Where GLUE rows come from, first match wins:
  1. ``data_dir``: a folder of GLUE TSV files for the task (``.../glue/SST-2``) or a data root
     holding ``glue/<GLUE_NAME>/``;
  2. ``$SENSIBERT_DATA_DIR``: a data root laid out like ``shared/data``;
  3. the Hugging Face hub (``nyu-mll/glue``), skipped when offline or unreachable;
  4. a task's built-in demo set where it has one (sst2: ``toolchain.tasks.demo_data``), with a warning.
An explicit folder (1 or 2) is never silently replaced: a file missing there is an error.

TSV files are read with quoting off (a plain split on TAB): QNLI has fields that start with a
``"`` character, which CSV quoting would eat.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlparse

from toolchain.errors import InputError
from toolchain.scoring import Scorer, accuracy_scorer

if TYPE_CHECKING:  # heavy imports stay lazy: `sensibert --help` must not pay for them
    import datasets
    import transformers

log = logging.getLogger(__name__)

DATA_ENV = "SENSIBERT_DATA_DIR"
HUB_DATASET = "nyu-mll/glue"
HUB_PROBE_TIMEOUT_S = 3.0
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class TaskKind:
    """What one kind of task does; each kind module defines a subclass and one instance of it.

    The class attributes are what the other layers read: ``name`` is the manifest's
    ``task_kind`` (``deploy.manifest.TASK_KINDS``: how ``deploy/`` feeds the model and reads its
    ``outputs``, as ``postprocess`` says), ``metric`` the primary dev score, ``label_keys`` the
    batch columns that are targets (not model inputs: the trainer strips them for a teacher),
    ``text_inputs`` how many texts one example has, ``carve_what`` what a carving key is.
    """

    name: str = ""
    metric: str = "accuracy"
    label_keys: tuple[str, ...] = ("labels",)
    outputs: tuple[str, ...] = ("logits",)
    postprocess: str = "softmax over the labels; the argmax is the prediction"
    text_inputs: int = 1
    carve_what: str = "column"

    def check(self, spec: "TaskSpec") -> None:
        """Raise ValueError unless ``spec`` is a task of this kind (a bug in its registration)."""
        if len(spec.text_fields) != self.text_inputs:
            raise ValueError(f"task {spec.name}: a {self.name} task has {self.text_inputs} text field(s), "
                             f"got {spec.text_fields}")

    def carve_keys(self, spec: "TaskSpec") -> tuple[str, ...]:
        """Return the keys a task's file can be carved by (default: its text columns, by field or
        TSV header name)."""
        return tuple(dict.fromkeys(spec.text_fields + spec.columns))

    def load(self, spec: "TaskSpec", tokenizer: Any, *, data_dir: Any, max_length: int,
             max_train_samples: int | None, max_eval_samples: int | None, seed: int, need_train: bool,
             carve: "CarveConfig | None", doc_stride: int) -> "TaskData":
        """Return the task's tokenised data (``load_task_data`` has checked the common arguments)."""
        raise NotImplementedError(f"task kind {self.name!r} does not load data")

    def scorer(self, data: "TaskData", split: str = "eval") -> Scorer:
        """Return how the predictions on a split of ``data`` (``eval`` or ``validation``) are scored
        (default: accuracy of labels, the same for every split)."""
        return accuracy_scorer()

    def carve_validation(self, data: "TaskData", fraction: float, seed: int) -> "TaskData":
        """Return ``data`` with a validation split carved out of its training rows, disjoint by the
        task's first text field (SST-2's sentence, QNLI's question, MNLI's premise): a checkpoint
        chosen on it has never seen those texts, and the eval split stays untouched."""
        import dataclasses

        texts = data.train_texts or []
        keys = [t if isinstance(t, str) else t[0] for t in texts]
        if data.train is None or len(keys) != len(data.train):
            raise InputError(f"{data.task.name}: the training rows are not its inputs, so no validation split can be "
                             "carved; drop --validation-fraction")
        train, held = carve_validation_indices(keys, fraction, seed, f"distinct {data.task.text_fields[0]}s")
        record = {"from": "train", "by": data.task.text_fields[0], "fraction": fraction, "seed": seed,
                  "train_rows": len(train), "validation_rows": len(held)}
        return dataclasses.replace(data, train=data.train.select(train), validation=data.train.select(held),
                                   train_texts=[texts[i] for i in train], validation_record=record)

    def eval_texts(self, data: "TaskData") -> list[Any]:
        """Return the raw eval inputs (default: a text, or a (text, text) pair, per row)."""
        return data.eval_items()[0]

    def provenance(self, data: "TaskData") -> dict[str, Any]:
        """Return what a fine-tuned folder records about the data beyond the common fields."""
        return {}


@dataclass(frozen=True)
class TaskSpec:
    """A task: where its files live, its text fields, its labels and its kind (``handler``).

    The ``tsv_*`` fields give the GLUE file's column names and label strings where they differ
    from the hub's (MNLI's ``sentence1``/``gold_label``, SST-2's ``0``/``1``). ``demo`` returns
    (rows, source) of a built-in demo split when no other source has the data.
    """

    name: str
    glue_name: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]
    dev_split: str = "dev"
    tsv_text_columns: tuple[str, ...] = ()  # default: text_fields
    tsv_label_column: str = "label"
    tsv_labels: tuple[str, ...] = ()  # default: label_names
    hub_dev_split: str = "validation"
    # Further labelled dev splits scored where present: (score name, GLUE file stem, hub split),
    # e.g. MNLI's mismatched genres. Never used to train or to select a checkpoint.
    extra_dev: tuple[tuple[str, str, str], ...] = ()
    handler: TaskKind | None = None
    demo: Callable[["TaskSpec", str], Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.handler, TaskKind):
            raise ValueError(f"task {self.name}: handler must be a TaskKind (e.g. toolchain.tasks.single.SINGLE), "
                             f"got {self.handler!r}")
        self.handler.check(self)
        if self.tsv_text_columns and len(self.tsv_text_columns) != len(self.text_fields):
            raise ValueError(f"task {self.name}: tsv_text_columns must match text_fields")
        if self.tsv_labels and len(self.tsv_labels) != len(self.label_names):
            raise ValueError(f"task {self.name}: tsv_labels must match label_names")

    @property
    def kind(self) -> str:
        """Return ``single`` for one-sentence tasks, ``pair`` for sentence pairs, ``qa`` for span extraction."""
        return self.handler.name

    @property
    def qa(self) -> bool:
        """Return whether the task's model is a span (start, end) head rather than a classifier."""
        return self.kind == "qa"

    @property
    def metric(self) -> str:
        """Return the name of the task's primary dev score (what selects checkpoints and reports)."""
        return self.handler.metric
    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def columns(self) -> tuple[str, ...]:
        """Return the TSV header names of the text fields, in text_fields order."""
        return self.tsv_text_columns or self.text_fields

    @property
    def labels_in_file(self) -> tuple[str, ...]:
        """Return the label strings the TSV uses, in label-id order."""
        return self.tsv_labels or self.label_names


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to ``TASKS`` and return it; a second task under the same name is a bug."""
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """Return the registered task; GLUE spellings (``SST-2``, ``sst-2``) are accepted too."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise InputError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    return TASKS[key]


# ---------------------------------------------------------------- raw rows

class MissingData(InputError):
    """No source holds a split: fatal for train and dev, a skip for a task's ``extra_dev``."""


def _split_key(spec: TaskSpec, split: str) -> str:
    """Return ``train``, ``dev`` or an ``extra_dev`` name for a split name (``validation`` and the
    GLUE file stem too)."""
    if split == "train":
        return "train"
    if split in ("dev", "validation", spec.dev_split, spec.hub_dev_split):
        return "dev"
    for name, stem, hub in spec.extra_dev:
        if split in (name, stem, hub):
            return name
    raise InputError(f"unknown split {split!r} for task {spec.name}; choose train or dev "
                     "(GLUE test files have no labels)")


def _split_names(spec: TaskSpec, key: str) -> tuple[str, str]:
    """Return (GLUE file stem, hub split) of a split key: train, dev or an ``extra_dev`` name."""
    names = {"train": ("train", "train"), "dev": (spec.dev_split, spec.hub_dev_split),
             **{name: (stem, hub) for name, stem, hub in spec.extra_dev}}
    return names[key]


def _file_name(spec: TaskSpec, key: str) -> str:
    return f"{_split_names(spec, key)[0]}.tsv"


def _task_folder(spec: TaskSpec, folder: Path) -> Path:
    """Return the folder holding the task's TSV files, given it or a data root above it."""
    for candidate in (folder / "glue" / spec.glue_name, folder / spec.glue_name):
        if candidate.is_dir():
            return candidate
    return folder


def _features(spec: TaskSpec):
    from datasets import ClassLabel, Features, Value

    return Features({**{f: Value("string") for f in spec.text_fields},
                     "label": ClassLabel(names=list(spec.label_names))})


def read_glue_tsv(path: Path, spec: TaskSpec) -> dict[str, list]:
    """Return the columns (text fields + integer ``label``) of a GLUE TSV file.

    Quoting is off: each line is split on TAB as is, so field text survives byte for byte.
    Columns are found by header name, so extra GLUE columns (index, parses, ids) are ignored.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8") from None
    # split("\n"), not splitlines(): the latter also breaks lines at \x1c-\x1e, \x85 and \u2028
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split("\t")
    needed = spec.columns + (spec.tsv_label_column,)
    missing = [c for c in needed if c not in header]
    if missing:
        raise InputError(f"{path}:1: header row has no column {missing[0]!r} (seen: {', '.join(header)!r}); "
                         f"a GLUE {spec.glue_name} file needs a header row naming {', '.join(needed)}")
    where = [header.index(c) for c in needed]
    label_ids = {s: i for i, s in enumerate(spec.labels_in_file)}
    columns: dict[str, list] = {f: [] for f in spec.text_fields}
    labels: list[int] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            continue  # blank lines (a final newline) carry no row
        parts = line.split("\t")
        if len(parts) != len(header):
            raise InputError(f"{path}:{lineno}: {len(parts)} tab-separated fields but the header has "
                             f"{len(header)}; fix the row (fields must not contain tabs or newlines)")
        value = parts[where[-1]]
        if value not in label_ids:
            raise InputError(f"{path}:{lineno}: unknown label {value!r} for task {spec.name}; "
                             f"expected one of: {', '.join(spec.labels_in_file)}")
        for field_name, col in zip(spec.text_fields, where):
            columns[field_name].append(parts[col])
        labels.append(label_ids[value])
    if not labels:
        raise InputError(f"{path}: no rows after the header; the file must hold at least one "
                         f"labelled {spec.glue_name} row")
    columns["label"] = labels
    return columns


def _load_tsv(spec: TaskSpec, key: str, folder: Path, origin: str):
    from datasets import Dataset

    path = folder / _file_name(spec, key)
    if not path.is_file():
        raise MissingData(f"{path}: file not found (task {spec.name}, {key} split, from {origin}); "
                         f"put GLUE's {spec.glue_name}/{path.name} there or point {origin} elsewhere")
    return Dataset.from_dict(read_glue_tsv(path, spec), features=_features(spec)), f"tsv:{path}"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """Return whether the hub's host accepts a TCP connection within a few seconds.

    Without this, ``load_dataset`` on a machine with no network may retry for minutes.
    Behind a proxy a direct connection says nothing, so the hub is then just tried.
    """
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=HUB_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _load_hub(spec: TaskSpec, key: str):
    """Return (dataset, source) from the hub, or (None, why not)."""
    if any(_truthy(os.environ.get(v)) for v in _OFFLINE_VARS):
        return None, "skipped (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)"
    if not _hub_reachable():
        return None, "unreachable"
    import datasets

    split = _split_names(spec, key)[1]
    try:
        ds = datasets.load_dataset(HUB_DATASET, spec.name, split=split)
    except Exception as exc:  # network and hub errors come in many types; the next source is tried
        reason = f"failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        log.warning("hub dataset %s/%s %s; trying the next data source", HUB_DATASET, spec.name, reason)
        return None, reason
    ds = ds.select_columns(list(spec.text_fields) + ["label"]).cast(_features(spec))
    return ds, f"hub:{HUB_DATASET}/{spec.name}/{split}"


def load_split(task: str | TaskSpec, split: str, data_dir: str | os.PathLike | None = None
               ) -> tuple["datasets.Dataset", str]:
    """Return the raw rows of one split (text fields + integer ``label``) and where they came from.

    The source reads ``tsv:<file>``, ``hub:nyu-mll/glue/<task>/<split>`` or ``demo:<task>/<split>``.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    key = _split_key(spec, split)
    if data_dir is not None:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise InputError(f"data dir {folder} not found; pass a folder of GLUE TSV files "
                             f"(e.g. .../glue/{spec.glue_name}) or a data root holding glue/{spec.glue_name}/")
        return _load_tsv(spec, key, _task_folder(spec, folder), "--data-dir")
    if os.environ.get(DATA_ENV):
        root = Path(os.environ[DATA_ENV])
        if not root.is_dir():
            raise InputError(f"{DATA_ENV}={root} is not a folder; set it to a data root holding "
                             f"glue/{spec.glue_name}/ or unset it")
        return _load_tsv(spec, key, _task_folder(spec, root), DATA_ENV)
    ds, hub_note = _load_hub(spec, key)
    if ds is not None:
        return ds, hub_note
    if spec.demo is not None and key in ("train", "dev"):
        return spec.demo(spec, key)
    raise MissingData(f"no data for task {spec.name} ({key} split): pass --data-dir (a folder of GLUE TSV "
                     f"files such as glue/{spec.glue_name}/) or set {DATA_ENV} to a data root holding "
                     f"glue/{spec.glue_name}/{_file_name(spec, key)}; the hub was {hub_note}")


# ---------------------------------------------------------------- tokenised task data

@dataclass(frozen=True)
class CarveConfig:
    """Carve train and eval splits out of one labelled file, disjoint by a key column.

    GLUE gives no labels for its test files and this machine has no MNLI/QNLI training split:
    carving a dev file by a key (QNLI's question, MNLI's premise, SQuAD's article) keeps
    near-duplicate rows on one side, so the eval split measures generalisation. Results are
    "carved" and not comparable to figures on the official splits.
    """

    by: str
    eval_fraction: float = 0.2
    source_split: str = "dev"

    def __post_init__(self) -> None:
        if not isinstance(self.by, str) or not self.by:
            raise InputError("--holdout-by is empty; name the key column to keep disjoint (e.g. question)")
        if not (isinstance(self.eval_fraction, float) and 0 < self.eval_fraction < 1):
            raise InputError(f"--eval-fraction {self.eval_fraction!r} is out of range; choose a fraction in (0, 1)")
        if self.source_split not in ("train", "dev"):
            raise InputError(f"--train-from {self.source_split!r} is unknown; choose train or dev")


def carve_keys(spec: TaskSpec) -> tuple[str, ...]:
    """Return the keys a task's file can be carved by, as its kind defines them (GLUE: its text
    columns, by field or TSV header name; SQuAD: article, context and question)."""
    return spec.handler.carve_keys(spec)


def check_carve_key(spec: TaskSpec, key: str) -> None:
    """Raise InputError unless ``key`` is one the task's file can be carved by (before any work)."""
    if key not in carve_keys(spec):
        raise InputError(f"--holdout-by {key!r}: {spec.name} has no such {spec.handler.carve_what}; choose one of: "
                         f"{', '.join(carve_keys(spec))}")


def carve_indices(keys: list[Any], eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Return (train, eval) row indices, in file order, such that no key value is on both sides.

    The distinct key values are shuffled with ``seed``; the first ``ceil(fraction * n)`` go to
    eval (at least one, and at least one left for train).
    """
    import math

    import numpy as np

    distinct = sorted(set(keys), key=str)
    if len(distinct) < 2:
        raise InputError(f"cannot carve by a key with {len(distinct)} distinct value(s); "
                         "choose a key column whose values differ between rows")
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_eval = min(max(1, math.ceil(eval_fraction * len(distinct))), len(distinct) - 1)
    held = {distinct[i] for i in order[:n_eval].tolist()}
    train = [i for i, k in enumerate(keys) if k not in held]
    evaluation = [i for i, k in enumerate(keys) if k in held]
    return train, evaluation


def carve_record(carve: CarveConfig, source: str, n_train: int, n_eval: int, seed: int) -> dict[str, Any]:
    """Return the provenance of carved splits, as reports and tables show it."""
    return {"carved": True, "from": source, "by": carve.by, "eval_fraction": carve.eval_fraction,
            "seed": seed, "train_rows": n_train, "eval_rows": n_eval}


def carve_split(ds: "datasets.Dataset", spec: TaskSpec, carve: CarveConfig, seed: int
                ) -> tuple["datasets.Dataset", "datasets.Dataset"]:
    """Return (train, eval) rows of one GLUE split, disjoint by the text field ``carve.by``."""
    check_carve_key(spec, carve.by)
    fields = dict(zip(spec.columns, spec.text_fields)) | {f: f for f in spec.text_fields}
    train, evaluation = carve_indices(ds[fields[carve.by]], carve.eval_fraction, seed)
    return ds.select(train), ds.select(evaluation)


@dataclass
class TaskData:
    """Tokenised train and eval splits of a task, with the collator that pads each batch.

    ``eval_rows`` keeps the raw eval rows (texts and labels) for scoring an ONNX artifact;
    ``carved`` is set when both splits were carved out of one file (``carve_record``);
    ``extra_eval`` holds the raw rows of the task's further dev splits that are present (MNLI
    mismatched), scored on the artifacts beside the main split, with ``extra_sources``;
    ``qa`` what scoring a QA model needs (``toolchain.tasks.qa.QAEval``), None for classifiers.
    """

    task: TaskSpec
    train: "datasets.Dataset | None"
    eval: "datasets.Dataset"
    source: str
    data_hash: str
    collator: "transformers.DataCollatorWithPadding"
    eval_rows: "datasets.Dataset | None" = None
    carved: dict[str, Any] | None = None
    qa: Any = None
    train_texts: list[Any] | None = None  # raw training inputs (texts, pairs, (question, context))
    extra_eval: dict[str, "datasets.Dataset"] = field(default_factory=dict)
    extra_sources: dict[str, str] = field(default_factory=dict)
    validation: "datasets.Dataset | None" = None  # carved from train: chooses checkpoints, never reported
    validation_record: dict[str, Any] | None = None
    validation_qa: Any = None  # what scoring the validation split needs, for QA (``QAEval``)

    @property
    def label_keys(self) -> tuple[str, ...]:
        """Return the batch columns that are targets, not model inputs (the task kind's)."""
        return self.task.handler.label_keys

    def scorer(self) -> Scorer:
        """Return how the task scores eval predictions (accuracy; F1 and EM for QA)."""
        return self.task.handler.scorer(self)

    def validation_scorer(self) -> Scorer | None:
        """Return how the task scores the validation split's predictions (None: no validation)."""
        return None if self.validation is None else self.task.handler.scorer(self, "validation")

    def eval_texts(self) -> list[Any]:
        """Return the raw eval inputs: texts or pairs, or (question, context) for QA."""
        return self.task.handler.eval_texts(self)

    def eval_items(self) -> tuple[list[Any], list[int]]:
        """Return the raw eval inputs (a text, or a (text, text) pair) and their label ids."""
        if self.eval_rows is None:
            raise ValueError("these task data were built without their raw eval rows")
        return _items(self.eval_rows, self.task)

    def extra_eval_items(self) -> dict[str, tuple[list[Any], list[int]]]:
        """Return {split name: (raw inputs, label ids)} of the further dev splits present."""
        return {name: _items(rows, self.task) for name, rows in self.extra_eval.items()}


def load_extra_dev(spec: TaskSpec, data_dir: str | os.PathLike | None, max_samples: int | None,
                   seed: int) -> tuple[dict[str, "datasets.Dataset"], dict[str, str]]:
    """Return the raw rows and sources of the task's ``extra_dev`` splits that some source holds.

    An absent split is skipped (GLUE's MNLI has both dev files, a user's copy may not); a present
    but damaged one is an error like any other file.
    """
    rows: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, _stem, _hub in spec.extra_dev:
        try:
            ds, source = load_split(spec, name, data_dir)
        except MissingData:
            continue
        rows[name], sources[name] = subset(ds, max_samples, seed), source
    return rows, sources


def subset(ds: "datasets.Dataset", n: int | None, seed: int) -> "datasets.Dataset":
    """Return a seeded random subset of ``n`` rows, kept in file order (all rows if n is None)."""
    if n is None or n >= len(ds):
        return ds
    import numpy as np

    keep = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    return ds.select(keep.tolist())


def rows_hash(spec: TaskSpec, max_length: int, splits: dict[str, "datasets.Dataset"]) -> str:
    """Return the sha256 of the raw rows used and the settings that shape the tokens.

    Seed and sample counts need not be listed: they act only through which rows are used.
    The tokenizer is identified by the model's hash, not here.
    """
    digest = hashlib.sha256()
    settings = {"task": spec.name, "text_fields": spec.text_fields, "label_names": spec.label_names,
                "max_length": max_length}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, ds in splits.items():
        columns = ds.to_dict()
        digest.update(f"\n#{name} {len(ds)}\n".encode())
        for row in zip(*(columns[c] for c in (*spec.text_fields, "label"))):
            digest.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def tokenize(ds: "datasets.Dataset", spec: TaskSpec, tokenizer: Any, max_length: int,
             desc: str = "tokenising") -> "datasets.Dataset":
    """Return ``ds`` as input_ids / attention_mask / (token_type_ids) / labels, truncated, unpadded."""
    def encode(batch: dict[str, list]) -> dict[str, list]:
        return dict(tokenizer(*(batch[f] for f in spec.text_fields), truncation=True, max_length=max_length))

    # In memory and never read from a cache: a cache entry keyed by a fingerprint could serve
    # another tokenizer's ids. A given fingerprint also spares datasets from pickling the
    # tokenizer to hash it (slow, and a warning when it cannot).
    fingerprint = hashlib.sha256(json.dumps([ds._fingerprint, type(tokenizer).__name__, len(tokenizer),
                                             getattr(tokenizer, "name_or_path", ""), max_length]).encode())
    out = ds.map(encode, batched=True, remove_columns=list(spec.text_fields), keep_in_memory=True,
                 load_from_cache_file=False, new_fingerprint=fingerprint.hexdigest()[:32], desc=desc)
    return out.rename_column("label", "labels")


def _items(rows: "datasets.Dataset", spec: TaskSpec) -> tuple[list[Any], list[int]]:
    """Return the raw inputs of GLUE rows and their label ids."""
    return _texts(rows, spec), list(rows["label"])


def _texts(rows: "datasets.Dataset", spec: TaskSpec) -> list[Any]:
    """Return the raw inputs of GLUE rows: a text each, or a (text, text) pair."""
    fields = spec.text_fields
    columns = [rows[f] for f in fields]
    return list(columns[0]) if len(fields) == 1 else list(zip(*columns))


def load_task_data(task: str, tokenizer: Any, *, data_dir: str | os.PathLike | None = None,
                   max_length: int = 128, max_train_samples: int | None = None,
                   max_eval_samples: int | None = None, seed: int = 0, need_train: bool = True,
                   carve: CarveConfig | None = None, doc_stride: int = 128,
                   validation_fraction: float = 0.0) -> TaskData:
    """Return a task's tokenised train (if needed) and eval splits with a padding collator.

    With ``carve``, both splits come from one file (``carve.source_split``), disjoint by a key;
    the sample caps then apply to the carved splits. ``validation_fraction`` > 0 carves a
    validation split out of the training split (``carve_validation``), which chooses checkpoints
    so that the eval split only reports.

    Example:
        >>> data = load_task_data("sst2", tokenizer, max_train_samples=1000)  # doctest: +SKIP
        >>> batch = data.collator([data.eval[i] for i in range(8)])           # doctest: +SKIP
    """
    spec = get_task(task)
    if not isinstance(max_length, int) or max_length < 2:
        raise InputError(f"max length {max_length!r} is too small; choose at least 2 tokens ([CLS] and [SEP])")
    for flag, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InputError(f"{flag} {value!r} is out of range; choose a positive whole number or none (all rows)")
    check_validation_fraction(validation_fraction, spec)
    data = spec.handler.load(spec, tokenizer, data_dir=data_dir, max_length=max_length,
                             max_train_samples=max_train_samples, max_eval_samples=max_eval_samples, seed=seed,
                             need_train=need_train, carve=carve, doc_stride=doc_stride)
    return carve_validation(data, validation_fraction, seed) if validation_fraction and need_train else data


def check_validation_fraction(fraction: Any, spec: TaskSpec) -> None:
    """Refuse a validation fraction that leaves no training data or is not a fraction (that it
    leaves some validation data is known once the rows are read: ``carve_validation_indices``)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise InputError(f"--validation-fraction {fraction!r} leaves no training data or is not a fraction; "
                         "choose a value in [0, 1), e.g. 0.1 (0: keep the last checkpoint)")


def carve_validation_indices(keys: list[Any], fraction: float, seed: int, what: str) -> tuple[list[int], list[int]]:
    """Return (train, validation) indices of training rows, no key on both sides; InputError when
    the rows have too few distinct keys to leave both training and validation data."""
    if len(set(keys)) < 2:
        raise InputError(f"--validation-fraction {fraction} of {len(set(keys))} {what} leaves no training or no "
                         "validation data; train on more rows or drop --validation-fraction")
    return carve_indices(keys, fraction, seed)


def carve_validation(data: TaskData, fraction: float, seed: int) -> TaskData:
    """Return ``data`` with a validation split carved out of its training data by its task kind
    (``TaskKind.carve_validation``): it chooses checkpoints, the eval split only reports."""
    return data.task.handler.carve_validation(data, fraction, seed)


class GlueKind(TaskKind):
    """A GLUE-style classification kind: rows from TSV files (or the hub, or a demo set), carved
    by a text column, tokenised as one text or a pair, scored by accuracy (the defaults of
    ``TaskKind``). ``single.SingleKind`` and ``pair.PairKind`` subclass it."""

    def load(self, spec: TaskSpec, tokenizer: Any, *, data_dir: Any, max_length: int,
             max_train_samples: int | None, max_eval_samples: int | None, seed: int, need_train: bool,
             carve: CarveConfig | None, doc_stride: int) -> TaskData:
        """Return the tokenised GLUE splits (``doc_stride`` is a QA setting, unused here)."""
        from transformers import DataCollatorWithPadding

        raw: dict[str, Any] = {}
        sources: list[str] = []
        carved = None
        if carve is not None:
            rows, source = load_split(spec, carve.source_split, data_dir)
            train, evaluation = carve_split(rows, spec, carve, seed)
            carved = carve_record(carve, source, len(train), len(evaluation), seed)
            if need_train:
                raw["train"] = subset(train, max_train_samples, seed)
            raw["eval"] = subset(evaluation, max_eval_samples, seed)
            sources.append(f"carved by {carve.by} from {source}")
        else:
            if need_train:
                train, source = load_split(spec, "train", data_dir)
                raw["train"] = subset(train, max_train_samples, seed)
                sources.append(source)
            evaluation, source = load_split(spec, "dev", data_dir)
            raw["eval"] = subset(evaluation, max_eval_samples, seed)
            sources.append(source)
        data_hash = rows_hash(spec, max_length, raw)  # what trains and selects checkpoints, not the extra splits
        tokenised = {name: tokenize(ds, spec, tokenizer, max_length, desc=f"tokenising {spec.name} {name}")
                     for name, ds in raw.items()}
        extra, extra_sources = load_extra_dev(spec, data_dir, max_eval_samples, seed)
        sources += [f"{name} dev: {source}" for name, source in extra_sources.items()]
        return TaskData(task=spec, train=tokenised.get("train"), eval=tokenised["eval"],
                        source="; ".join(dict.fromkeys(sources)), data_hash=data_hash,
                        collator=DataCollatorWithPadding(tokenizer), eval_rows=raw["eval"], carved=carved,
                        train_texts=_texts(raw["train"], spec) if "train" in raw else None,
                        extra_eval=extra, extra_sources=extra_sources)
