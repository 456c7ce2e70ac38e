"""Extractive question answering (SQuAD v1.1): a question and a context in, an answer span out.

This kind owns its reader (the official JSON), its carving (by article, paragraph or question),
its features (sliding windows with answer positions), its metric (the official F1 and exact
match) and what the exporter and ``deploy/`` need: the manifest's ``task_kind`` ``qa``, the
``start_logits`` / ``end_logits`` outputs and the window stride recorded at fine-tuning.

The windows come from :func:`deploy.qa.windows` and answers from :func:`deploy.qa.extract_answer`,
so training, evaluation here and inference on the device cut and read contexts the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.errors import InputError
from toolchain.scoring import Scorer
from toolchain.tasks.base import (DATA_ENV, CarveConfig, MissingData, TaskData, TaskKind, TaskSpec, carve_indices,
                                  carve_record, carve_validation_indices, register_task)

if TYPE_CHECKING:  # deploy.qa loads numpy: imported where used, so `sensibert --help` stays cheap
    import numpy as np
    from transformers import PreTrainedTokenizerFast

    from deploy.qa import Window

CARVE_KEYS = ("article", "context", "question")


@dataclass(frozen=True)
class SquadExample:
    """One question over one paragraph, with every gold answer (the first one is trained on)."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


# ---------------------------------------------------------------- reading

def _fix() -> str:
    return "pass the official SQuAD v1.1 JSON (e.g. dev-v1.1.json)"


def _field(obj: Any, key: str, kind: type, where: str, path: Path) -> Any:
    """Return ``obj[key]`` when it has the expected type; the file is malformed otherwise."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise InputError(f"{path}: {where} has no {kind.__name__} field {key!r}; {_fix()}")
    return value


def _answer_problem(context: str, answers: list[Any]) -> str | None:
    """Return why the gold answers cannot be trained or scored on, or None when they are usable."""
    if not answers:
        return "no gold answers"
    for k, answer in enumerate(answers):
        text = answer.get("text") if isinstance(answer, dict) else None
        start = answer.get("answer_start") if isinstance(answer, dict) else None
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            return f"answer {k} lacks a text or an integer answer_start"
        if not text.strip():
            return f"answer {k} is empty"
        if context[start:start + len(text)] != text:
            return f"answer {k} {text!r} is not at offset {start} of the context"
    return None


def read_squad(path: Path) -> tuple[list[SquadExample], list[dict]]:
    """Return (examples, skipped) from a SQuAD v1.1 JSON file, in file order.

    A question whose gold answer text is not at its offset, or with no answer, is skipped and
    listed as {"id", "reason"}: one bad record should not cost the other ten thousand.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found; {_fix()}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); {_fix()}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise InputError(f"{path}: no 'data' list at the top level; {_fix()}")
    examples: list[SquadExample] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    for i, article in enumerate(data):
        title = _field(article, "title", str, f"data[{i}]", path)
        for j, paragraph in enumerate(_field(article, "paragraphs", list, f"data[{i}]", path)):
            where = f"data[{i}].paragraphs[{j}]"
            context = _field(paragraph, "context", str, where, path)
            for k, qa in enumerate(_field(paragraph, "qas", list, where, path)):
                qid = _field(qa, "id", str, f"{where}.qas[{k}]", path)
                question = _field(qa, "question", str, f"{where}.qas[{k}]", path)
                answers = _field(qa, "answers", list, f"{where}.qas[{k}]", path)
                reason = "duplicate id" if qid in seen else _answer_problem(context, answers)
                if reason is not None:
                    skipped.append({"id": qid, "reason": reason})
                    continue
                seen.add(qid)
                examples.append(SquadExample(
                    id=qid, title=title, context=context, question=question,
                    answers=tuple(a["text"] for a in answers),
                    answer_starts=tuple(int(a["answer_start"]) for a in answers)))
    return examples, skipped


# ---------------------------------------------------------------- carving

def carve_examples(examples: Sequence[SquadExample], by: str, eval_fraction: float, seed: int
                   ) -> tuple[list[SquadExample], list[SquadExample]]:
    """Return (train, eval) examples with no article, paragraph or question on both sides.

    Carving by article keeps every question about a topic on one side, so the eval split
    measures reading unseen text rather than recall of a paragraph seen in training.
    """
    if by not in CARVE_KEYS:
        raise InputError(f"--holdout-by {by!r}: squad has no such key; choose one of: {', '.join(CARVE_KEYS)}")
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float)) or not 0 < eval_fraction < 1:
        raise InputError(f"--eval-fraction {eval_fraction!r} is out of range; choose a fraction in (0, 1)")
    if by == "article":
        keys = [e.title for e in examples]
    elif by == "context":
        keys = [e.context for e in examples]
    else:
        keys = [e.id for e in examples]
    train, evaluation = carve_indices(keys, float(eval_fraction), seed)
    return [examples[i] for i in train], [examples[i] for i in evaluation]


# ---------------------------------------------------------------- features

def _backend(tokenizer: PreTrainedTokenizerFast) -> Any:
    """Return the tokenizers.Tokenizer behind a transformers fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; "
                         "load the model's tokenizer.json (use_fast=True)")
    return backend


def answer_tokens(window: Window, start_char: int, end_char: int) -> tuple[int, int] | None:
    """Return the (start, end) token indices of the character span [start_char, end_char) when the
    window holds all of it, else None.

    The span is trimmed of surrounding white space first; the start token is the first context
    token ending after start_char and the end token the last one starting before end_char.
    """
    context_tokens = [(t, off) for t, off in enumerate(window.offsets) if off is not None]
    if not context_tokens or end_char <= start_char:
        return None
    if context_tokens[0][1][0] > start_char or context_tokens[-1][1][1] < end_char:
        return None
    start = next((t for t, (_, e) in context_tokens if e > start_char), None)
    end = next((t for t, (s, _) in reversed(context_tokens) if s < end_char), None)
    if start is None or end is None or end < start:
        return None
    return start, end


def _gold_span(example: SquadExample) -> tuple[int, int]:
    """Return the character span of the first gold answer without surrounding white space."""
    text, start = example.answers[0], example.answer_starts[0]
    lead = len(text) - len(text.lstrip())
    return start + lead, start + len(text.rstrip())


def train_features(examples: Sequence[SquadExample], tokenizer: PreTrainedTokenizerFast, max_length: int,
                   doc_stride: int) -> tuple[dict[str, list], dict[str, int]]:
    """Return one training feature per window, with the token positions of the first gold answer.

    A window that does not hold the whole answer points both positions at [CLS] (token 0), as
    Hugging Face run_qa does; an example whose answer no window holds (it lies past the
    truncation) is counted in the stats, not fatal.
    """
    from deploy.qa import windows

    backend = _backend(tokenizer)
    return labelled_features(examples, [windows(backend, ex.question, ex.context, max_length, doc_stride)
                                        for ex in examples])


def labelled_features(examples: Sequence[SquadExample], windows_per_example: Sequence[Sequence[Window]]
                      ) -> tuple[dict[str, list], dict[str, int]]:
    """Return ``train_features`` of examples already cut into windows (e.g. by ``eval_features``)."""
    features: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "token_type_ids",
                                                 "start_positions", "end_positions")}
    without_answer = examples_without = 0
    for example, wins in zip(examples, windows_per_example):
        start_char, end_char = _gold_span(example)
        found = False
        for window in wins:
            span = answer_tokens(window, start_char, end_char)
            if span is None:
                without_answer += 1
                span = (0, 0)
            else:
                found = True
            features["input_ids"].append(window.input_ids)
            features["attention_mask"].append(window.attention_mask)
            features["token_type_ids"].append(window.token_type_ids)
            features["start_positions"].append(span[0])
            features["end_positions"].append(span[1])
        examples_without += not found
    stats = {"examples": len(examples), "features": len(features["input_ids"]),
             "windows_without_answer": without_answer, "examples_without_answer_window": examples_without}
    return features, stats


def eval_features(examples: Sequence[SquadExample], tokenizer: PreTrainedTokenizerFast, max_length: int,
                  doc_stride: int) -> tuple[dict[str, list], list[list[Window]]]:
    """Return one evaluation feature per window (with its ``example_index``) and each example's windows,
    which map the predicted token spans back to context text."""
    from deploy.qa import windows

    backend = _backend(tokenizer)
    features: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "token_type_ids", "example_index")}
    per_example: list[list[Window]] = []
    for index, example in enumerate(examples):
        wins = windows(backend, example.question, example.context, max_length, doc_stride)
        per_example.append(wins)
        for window in wins:
            features["input_ids"].append(window.input_ids)
            features["attention_mask"].append(window.attention_mask)
            features["token_type_ids"].append(window.token_type_ids)
            features["example_index"].append(index)
    return features, per_example


# ---------------------------------------------------------------- predictions and scores

def predict_answers(start_logits: np.ndarray, end_logits: np.ndarray, example_index: Sequence[int],
                    windows_per_example: Sequence[Sequence[Window]], examples: Sequence[SquadExample],
                    n_best: int = 20, max_answer_length: int = 30) -> dict[str, str]:
    """Return example id -> answer text from logit rows stacked in feature order (one per window)."""
    from deploy.qa import extract_answer

    if not len(start_logits) == len(end_logits) == len(example_index):
        raise InputError(f"{len(example_index)} features but {len(start_logits)} start and {len(end_logits)} "
                         "end logit rows; pass one row of each per feature, in feature order")
    if len(windows_per_example) != len(examples):
        raise InputError(f"{len(examples)} examples but {len(windows_per_example)} window lists; "
                         "pass the window lists eval_features returned for these examples")
    rows: dict[int, list[int]] = defaultdict(list)
    for row, index in enumerate(example_index):
        rows[int(index)].append(row)
    stray = sorted(set(rows) - set(range(len(examples))))
    if stray:
        raise InputError(f"example_index {stray[0]} is out of range for {len(examples)} examples; "
                         "pass the example_index eval_features returned for these examples")
    predictions: dict[str, str] = {}
    for index, (example, wins) in enumerate(zip(examples, windows_per_example)):
        mine = rows.get(index, [])
        if len(mine) != len(wins):
            raise InputError(f"example {example.id}: {len(wins)} windows but {len(mine)} logit rows; "
                             "pass the logits of every feature eval_features returned")
        answer = extract_answer([start_logits[r] for r in mine], [end_logits[r] for r in mine], wins,
                                example.context, n_best=n_best, max_answer_length=max_answer_length)
        predictions[example.id] = answer["text"]
    return predictions


def squad_scores(predictions: Mapping[str, str], examples: Sequence[SquadExample]) -> dict[str, float]:
    """Return the official exact match and F1 (fractions in [0, 1]) of predictions over the examples."""
    from deploy.qa import squad_metrics

    return squad_metrics(predictions, {e.id: e.answers for e in examples})


def qa_scorer(qa: QAEval) -> Scorer:
    """Return the Scorer of a QA task's eval split: F1 (primary) and exact match of the answers
    extracted from the eval windows' start and end logits."""
    def fn(predictions: Any, label_ids: Any) -> dict[str, float]:
        start, end = predictions[0], predictions[1]
        answers = predict_answers(start, end, qa.feature_example, qa.windows, qa.examples)
        scores = squad_scores(answers, qa.examples)
        return {"f1": scores["f1"], "exact_match": scores["exact_match"]}
    return Scorer("f1", fn)


def onnx_qa_scores(artifact: Path, precision: str, qa: QAEval) -> dict[str, float]:
    """Return SQuAD exact match and F1 of one ONNX model of a QA artifact on the eval examples,
    answered by deploy/ (its own windows, onnxruntime, its own answer extraction)."""
    from deploy.predict import PredictConfig, Predictor
    from toolchain.progress import CountBar

    predictor = Predictor(artifact, PredictConfig(precision=precision, batch_size=32))
    with CountBar(f"score {precision} ONNX") as bar:
        answers = predictor.answers([(ex.question, ex.context) for ex in qa.examples], progress=bar)
    scores = squad_scores({ex.id: a["text"] for ex, a in zip(qa.examples, answers)}, qa.examples)
    return {"f1": scores["f1"], "exact_match": scores["exact_match"]}


# ---------------------------------------------------------------- task data

@dataclass
class QAEval:
    """What scoring a QA model needs beyond the eval features: the examples, each example's
    windows (offsets back to its context) and the example of each feature, in feature order."""

    examples: list[Any]
    windows: list[list[Any]]
    feature_example: list[int]
    doc_stride: int
    skipped: list[dict[str, Any]]
    train_stats: dict[str, int] | None = None
    train_examples: list[Any] | None = None  # the training questions: a validation split is carved from them
    max_length: int = 0                      # the windows' length (a carved validation split is cut alike)



def qa_file(spec: TaskSpec, key: str, data_dir: str | os.PathLike | None) -> Path:
    """Return the SQuAD JSON file of a split: ``train-v1.1.json`` / ``dev-v1.1.json`` in
    ``data_dir`` (or its ``squad/``), else under ``$SENSIBERT_DATA_DIR/squad``."""
    name = "train-v1.1.json" if key == "train" else f"{spec.dev_split}.json"
    if data_dir is not None:
        folder, origin = Path(data_dir), "--data-dir"
    elif os.environ.get(DATA_ENV):
        folder, origin = Path(os.environ[DATA_ENV]), DATA_ENV
    else:
        raise MissingData(f"no data for task {spec.name} ({key} split): pass --data-dir (a folder holding "
                         f"{name}) or set {DATA_ENV} to a data root holding squad/{name}")
    if not folder.is_dir():
        raise InputError(f"{origin} {folder} is not a folder; pass a folder holding {name} or a data root "
                         f"holding squad/{name}")
    for candidate in (folder / "squad" / name, folder / name):
        if candidate.is_file():
            return candidate
    raise InputError(f"{folder / 'squad' / name}: file not found (task {spec.name}, {key} split, from {origin}); "
                     f"put SQuAD v1.1's {name} there, or carve train from dev with --train-from dev "
                     "--holdout-by article")


def _qa_subset(examples: list[Any], n: int | None, seed: int) -> list[Any]:
    """Return a seeded random subset of ``n`` examples, kept in file order (all if n is None)."""
    if n is None or n >= len(examples):
        return examples
    import numpy as np

    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
    return [examples[i] for i in keep.tolist()]


def qa_rows_hash(max_length: int, doc_stride: int, splits: dict[str, list[Any]]) -> str:
    """Return the sha256 of the QA examples used and the settings that shape their features."""
    digest = hashlib.sha256(json.dumps({"task": "squad", "max_length": max_length,
                                        "doc_stride": doc_stride}, sort_keys=True).encode())
    for name, examples in splits.items():
        digest.update(f"\n#{name} {len(examples)}\n".encode())
        for ex in examples:
            digest.update(json.dumps([ex.id, ex.question, ex.context, ex.answers, ex.answer_starts],
                                     ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def _load_qa_data(spec: TaskSpec, tokenizer: Any, data_dir: Any, max_length: int, doc_stride: int,
                  max_train_samples: int | None, max_eval_samples: int | None, seed: int, need_train: bool,
                  carve: CarveConfig | None) -> TaskData:
    """Return SQuAD-style task data: windowed train features with answer positions, eval features
    (with positions too, so the Trainer computes an eval loss) and what scoring needs (QAEval)."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    if not isinstance(doc_stride, int) or isinstance(doc_stride, bool) or not 0 <= doc_stride < max_length:
        raise InputError(f"--doc-stride {doc_stride!r} is out of range; choose 0 <= stride < --max-length "
                         f"({max_length})")
    skipped: list[dict[str, Any]] = []
    splits: dict[str, list[Any]] = {}
    carved = None
    if carve is not None:
        path = qa_file(spec, carve.source_split, data_dir)
        examples, skipped = read_squad(path)
        train, evaluation = carve_examples(examples, carve.by, carve.eval_fraction, seed)
        carved = carve_record(carve, f"json:{path}", len(train), len(evaluation), seed)
        sources = [f"carved by {carve.by} from json:{path}"]
    else:
        sources = []
        train = []
        if need_train:
            path = qa_file(spec, "train", data_dir)
            train, bad = read_squad(path)
            skipped += bad
            sources.append(f"json:{path}")
        path = qa_file(spec, "dev", data_dir)
        evaluation, bad = read_squad(path)
        skipped += bad
        sources.append(f"json:{path}")
    if need_train:
        splits["train"] = _qa_subset(train, max_train_samples, seed)
    splits["eval"] = _qa_subset(evaluation, max_eval_samples, seed)
    for name, examples in splits.items():
        if not examples:
            raise InputError(f"the {name} split has no usable question; check the SQuAD file (skipped: "
                             f"{len(skipped)})")
    stats = None
    train_ds = None
    if need_train:
        features, stats = train_features(splits["train"], tokenizer, max_length, doc_stride)
        train_ds = Dataset.from_dict(features)
    unlabelled, windows = eval_features(splits["eval"], tokenizer, max_length, doc_stride)
    labelled, _ = labelled_features(splits["eval"], windows)  # the same windows, with answer positions
    eval_ds = Dataset.from_dict(labelled)
    qa = QAEval(examples=splits["eval"], windows=windows, feature_example=list(unlabelled["example_index"]),
                doc_stride=doc_stride, skipped=skipped, train_stats=stats, train_examples=splits.get("train"),
                max_length=max_length)
    return TaskData(task=spec, train=train_ds, eval=eval_ds, source="; ".join(dict.fromkeys(sources)),
                    data_hash=qa_rows_hash(max_length, doc_stride, splits),
                    collator=DataCollatorWithPadding(tokenizer), carved=carved, qa=qa,
                    train_texts=[(ex.question, ex.context) for ex in splits.get("train", [])] or None)


# ---------------------------------------------------------------- the kind

class QAKind(TaskKind):
    """Span extraction: a (question, context) pair cut into windows; start and end logits per token."""

    name = "qa"
    metric = "f1"
    label_keys = ("start_positions", "end_positions")
    outputs = ("start_logits", "end_logits")
    postprocess = ("the best span over every window of the context (deploy.qa.extract_answer), at the "
                   "recorded doc_stride")
    text_inputs = 2
    carve_what = "key"

    def carve_keys(self, spec: TaskSpec) -> tuple[str, ...]:
        return CARVE_KEYS

    def load(self, spec: TaskSpec, tokenizer: Any, *, data_dir: Any, max_length: int,
             max_train_samples: int | None, max_eval_samples: int | None, seed: int, need_train: bool,
             carve: CarveConfig | None, doc_stride: int) -> TaskData:
        return _load_qa_data(spec, tokenizer, data_dir, max_length, doc_stride, max_train_samples,
                             max_eval_samples, seed, need_train, carve)

    def scorer(self, data: TaskData, split: str = "eval") -> Scorer:
        return qa_scorer(data.validation_qa if split == "validation" else data.qa)

    def carve_validation(self, data: TaskData, fraction: float, seed: int) -> TaskData:
        """Return ``data`` with a validation split carved out of its training questions by article
        (no article on both sides), windowed as eval windows are and scored by F1 like them."""
        import dataclasses

        from datasets import Dataset

        qa, tokenizer = data.qa, data.collator.tokenizer
        examples = qa.train_examples or []
        titles = [e.title for e in examples]
        train_idx, held_idx = carve_validation_indices(titles, fraction, seed, "training articles")
        train, held = [examples[i] for i in train_idx], [examples[i] for i in held_idx]
        features, stats = train_features(train, tokenizer, qa.max_length, qa.doc_stride)
        unlabelled, windows = eval_features(held, tokenizer, qa.max_length, qa.doc_stride)
        labelled, _ = labelled_features(held, windows)
        validation_qa = QAEval(examples=held, windows=windows, feature_example=list(unlabelled["example_index"]),
                               doc_stride=qa.doc_stride, skipped=[], max_length=qa.max_length)
        record = {"from": "train", "by": "article", "fraction": fraction, "seed": seed,
                  "train_rows": len(train), "validation_rows": len(held),
                  "validation_articles": len({e.title for e in held})}
        return dataclasses.replace(data, train=Dataset.from_dict(features), validation=Dataset.from_dict(labelled),
                                   validation_qa=validation_qa, validation_record=record,
                                   qa=dataclasses.replace(qa, train_stats=stats, train_examples=train),
                                   train_texts=[(e.question, e.context) for e in train])

    def eval_texts(self, data: TaskData) -> list[Any]:
        return [(ex.question, ex.context) for ex in data.qa.examples]

    def provenance(self, data: TaskData) -> dict[str, Any]:
        return {"doc_stride": data.qa.doc_stride}


QA = QAKind()

# SQuAD v1.1: the "labels" of its head are the two per-token outputs, start and end.
register_task(TaskSpec("squad", "SQuAD", ("question", "context"), ("start", "end"), dev_split="dev-v1.1",
                       handler=QA))

__all__ = ["CARVE_KEYS", "QA", "QAEval", "QAKind", "SquadExample", "answer_tokens", "carve_examples",
           "eval_features", "labelled_features", "onnx_qa_scores", "predict_answers", "qa_file", "qa_rows_hash",
           "qa_scorer", "read_squad", "squad_scores", "train_features"]
