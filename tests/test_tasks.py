"""The paper's other tasks end to end on a tiny random BERT: sentence pairs (carved QNLI-format
data, a QQP-format file) and SQuAD-style extractive question answering."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy.manifest import read_manifest

WORDS = ("the a movie film is was good bad great awful fun boring not very it plot actors story best worst "
         "love hate dull brilliant paris france city river capital").split()
QUESTION_WORDS = ("what", "who", "where", "when", "why", "how")


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_squad(path: Path, articles: int = 6, seed: int = 0, bad_offset: bool = False) -> Path:
    """Write a small SQuAD v1.1 file: long contexts (several windows at 32 tokens), answers inside."""
    rng = random.Random(seed)
    data = []
    for a in range(articles):
        paragraphs = []
        for p in range(2):
            context = _sentence(rng, 40) + " ."
            qas = []
            for q in range(3):
                start_word = rng.randrange(0, 36)
                words = context.split()
                answer = " ".join(words[start_word:start_word + rng.randint(1, 3)])
                start = len(" ".join(words[:start_word])) + (1 if start_word else 0)
                assert context[start:start + len(answer)] == answer
                qas.append({"id": f"a{a}p{p}q{q}", "question": f"{rng.choice(QUESTION_WORDS)} {_sentence(rng, 4)} ?",
                            "answers": [{"text": answer, "answer_start": start},
                                        {"text": answer.split()[0], "answer_start": start}]})
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"article_{a}", "paragraphs": paragraphs})
    if bad_offset:
        data[0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    path.mkdir(parents=True, exist_ok=True)
    (path / "dev-v1.1.json").write_text(json.dumps({"data": data, "version": "1.1"}))
    return path


def write_qnli(path: Path, rows: int = 60, seed: int = 0) -> Path:
    """Write a QNLI-format dev.tsv (index, question, sentence, label), columns in GLUE's order."""
    rng = random.Random(seed)
    lines = ["index\tquestion\tsentence\tlabel"]
    for i in range(rows):
        question = f"{rng.choice(QUESTION_WORDS)} {_sentence(rng, 4)} ?"
        label = rng.choice(["entailment", "not_entailment"])
        lines.append(f"{i}\t{question}\t{_sentence(rng, 8)} .\t{label}")
    folder = path / "QNLI"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dev.tsv").write_text("\n".join(lines) + "\n")
    return path


def write_mnli(path: Path, rows: int = 48, seed: int = 0, mismatched: bool = True) -> Path:
    """Write MNLI's slim dev files (sentence1, sentence2, gold_label + an id), matched and mismatched."""
    rng = random.Random(seed)
    folder = path / "MNLI"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("dev_matched", "dev_mismatched")[:2 if mismatched else 1]:
        lines = ["pairID\tsentence1\tsentence2\tgold_label"]
        for i in range(rows if name == "dev_matched" else rows // 2):
            label = rng.choice(["entailment", "neutral", "contradiction"])
            lines.append(f"{name}{i}\t{_sentence(rng, 8)} .\t{_sentence(rng, 5)} .\t{label}")
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return path


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SENSIBERT_DATA_DIR"}
    return subprocess.run([sys.executable, "-m", "toolchain", "run", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


FAST = ["--epochs", "1", "--batch-size", "8", "--sensitivity-steps", "3", "--bench-runs", "2", "--keep", "0.5",
        "--precision", "int8", "--train-from", "dev"]


def test_pair_task_through_run_on_carved_split(tiny_bert_dir, tmp_path):
    data = write_qnli(tmp_path / "data")
    out = tmp_path / "run"
    res = _run("--model", str(tiny_bert_dir), "--task", "qnli", "--data-dir", str(data), "--holdout-by",
               "question", "--max-length", "32", "--vocab", "task", "--out", str(out), *FAST)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["carved"] and report["data"]["holdout_by"] == "question"
    assert report["data"]["train_rows"] + report["data"]["eval_rows"] == 60
    assert set(report["accuracy"]["trimmed_onnx"]) == {"fp32", "int8"}
    assert "carved" in (out / "report.md").read_text()
    manifest = read_manifest(Path(report["artifact"]))
    assert manifest.task_kind == "pair" and manifest.label_names == ("entailment", "not_entailment")
    vocab = report["vocab"]  # --vocab task: the trimmed artifact's table holds the task's pieces only
    assert vocab["vocab_after"] < vocab["vocab_before"] and 0 <= vocab["eval_unk_after"] <= 1
    assert json.loads((Path(report["artifact"]) / "config.json").read_text())["vocab_size"] == vocab["vocab_after"]
    assert "Vocabulary trimmed" in (out / "report.md").read_text()
    assert "| model | PyTorch (full vocabulary) |" in (out / "report.md").read_text()  # scored before the trim


@pytest.fixture(scope="module")
def squad_run(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("squad")
    data = write_squad(root / "data")
    out = root / "run"
    res = _run("--model", str(tiny_bert_dir), "--task", "squad", "--data-dir", str(data), "--holdout-by", "article",
               "--max-length", "32", "--doc-stride", "8", "--out", str(out), *FAST)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text()), data


def test_squad_through_run_reports_f1_and_exact_match(squad_run):
    out, report, _ = squad_run
    assert report["metric"] == "f1"
    assert report["data"]["carved"] and report["data"]["holdout_by"] == "article"
    for name in ("dense_onnx_scores", "trimmed_onnx_scores"):
        for precision, scores in report["accuracy"][name].items():
            assert set(scores) == {"f1", "exact_match"} and 0 <= scores["exact_match"] <= scores["f1"] <= 1
    # fp32 ONNX answers as PyTorch does (the same windows, the same extraction)
    assert report["accuracy"]["trimmed_onnx"]["fp32"] == pytest.approx(report["accuracy"]["trimmed_pytorch"], abs=0.02)
    text = (out / "report.md").read_text()
    assert "## Dev F1" in text and "exact match" in text
    manifest = read_manifest(Path(report["artifact"]))
    assert manifest.task_kind == "qa" and manifest.extra["doc_stride"] == 8 and manifest.max_length == 32
    assert report["after"]["trimmable_params"] < report["before"]["trimmable_params"]


def test_deploy_predict_answers_json_lines(squad_run, tmp_path):
    _, report, _ = squad_run
    context = "the movie was good and the plot was fun but the actors were boring in paris ."
    lines = [json.dumps({"question": "where were the actors ?", "context": context}),
             "not json",
             json.dumps({"question": "what ?"}),
             json.dumps({"question": "what " * 40, "context": context})]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    res = subprocess.run([sys.executable, "-m", "deploy", "predict", report["artifact"], "--input", str(src),
                          "--precision", "int8"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr  # some lines skipped
    # the tiny test vocabulary lists "a" twice; tokenizers then prints a warning about it to stdout
    rows = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    first = rows[0]
    assert first["answer"] == context[first["start"]:first["end"]] and first["answer"]
    assert first["windows"] >= 1
    assert "JSON" in rows[1]["error"] and '"context"' in rows[2]["error"] and "too long" in rows[3]["error"]


def test_qa_onnx_parity_with_uneven_heads(tiny_bert_dir, tmp_path):
    """A QA model trimmed unevenly exports with start and end logits equal to PyTorch's."""
    import onnxruntime as ort

    from toolchain.export import ExportConfig, export
    from toolchain.finetune import write_masked_dir
    from toolchain.masks import MaskSet
    from toolchain.models import load_classifier, load_tokenizer
    from toolchain.parity import onnx_outputs, sample_inputs, torch_outputs
    from toolchain.plan import dense_plan
    from toolchain.sensitivity import model_shape
    from toolchain.shrink import shrink_dir

    import torch

    model = load_classifier(tiny_bert_dir, 2, id2label={0: "start", 1: "end"}, qa=True)
    with torch.no_grad():  # as after training: no two LayerNorms or biases equal (the optimizer would share them)
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    masks = MaskSet.from_lists(4, 37, [[0, 2, 3], [1]], [list(range(0, 37, 2)), list(range(5))])
    tok = load_tokenizer(tiny_bert_dir)
    write_masked_dir(tmp_path / "masked", model, masks, dense_plan(model_shape(model)),
                     {"task": "squad", "task_kind": "qa", "max_length": 32, "doc_stride": 8}, [], tok)
    shrink_dir(tmp_path / "masked", tmp_path / "small")
    res = export(tmp_path / "small", tmp_path / "onnx", ExportConfig(optimize=True, quantize="int8"))
    assert res.attention_num_heads == (3, 1)
    from transformers import AutoModelForQuestionAnswering

    small = AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "small")).eval()
    batch = sample_inputs(tok, 24)
    session = ort.InferenceSession(str(res.path("fp32")), providers=["CPUExecutionProvider"])
    got = onnx_outputs(session, batch, ["start_logits", "end_logits"])
    want = torch_outputs(small, batch)
    for name in ("start_logits", "end_logits"):
        assert np.abs(got[name] - want[name]).max() <= 1e-4
    assert read_manifest(tmp_path / "onnx").task_kind == "qa"


def test_qqp_file_is_read_by_header(tiny_bert_dir, tmp_path):
    from toolchain.tasks import load_task_data
    from toolchain.models import load_tokenizer

    folder = tmp_path / "QQP"
    folder.mkdir()
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    rows = [f"{i}\t{2 * i}\t{2 * i + 1}\twhat is the city {i} ?\twhere is the river ?\t{i % 2}" for i in range(10)]
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("\n".join([header] + rows) + "\n")
    data = load_task_data("qqp", load_tokenizer(tiny_bert_dir), data_dir=tmp_path, max_length=32)
    assert len(data.train) == 10 and data.train["labels"] == [i % 2 for i in range(10)]
    assert data.task.label_names == ("not_duplicate", "duplicate")
    assert min(data.train["token_type_ids"][0]) == 0 and max(data.train["token_type_ids"][0]) == 1


def test_mnli_mismatched_dev_is_scored_where_present(tiny_bert_dir, tmp_path):
    from toolchain.tasks import CarveConfig, load_task_data
    from toolchain.errors import InputError
    from toolchain.models import load_tokenizer

    tok, carve = load_tokenizer(tiny_bert_dir), CarveConfig(by="premise")
    both = load_task_data("mnli", tok, data_dir=write_mnli(tmp_path / "both"), max_length=32, carve=carve)
    assert set(both.extra_eval) == {"mismatched"} and len(both.extra_eval["mismatched"]) == 24
    items, labels = both.extra_eval_items()["mismatched"]
    assert len(items) == 24 and all(len(pair) == 2 for pair in items) and set(labels) <= {0, 1, 2}
    assert "mismatched dev: tsv:" in both.source
    only = load_task_data("mnli", tok, data_dir=write_mnli(tmp_path / "only", mismatched=False), max_length=32,
                          carve=carve)
    assert only.extra_eval == {} and only.data_hash == both.data_hash  # absent: skipped, training unchanged
    damaged = write_mnli(tmp_path / "damaged")
    (damaged / "MNLI" / "dev_mismatched.tsv").write_text("pairID\tsentence1\tgold_label\n1\ta\tneutral\n")
    with pytest.raises(InputError, match="dev_mismatched.tsv:1: header row has no column 'sentence2'"):
        load_task_data("mnli", tok, data_dir=damaged, max_length=32, carve=carve)


def _mnli_run(tiny_bert_dir: Path, tmp_path: Path) -> Path:
    """Run MNLI (matched + mismatched dev) on a tiny BERT; check the mismatched scores; return --out."""
    out = tmp_path / "run"
    res = _run("--model", str(tiny_bert_dir), "--task", "mnli", "--data-dir", str(write_mnli(tmp_path / "data")),
               "--holdout-by", "premise", "--max-length", "32", "--out", str(out), *FAST)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["extra_eval_rows"] == {"mismatched": 24}
    for name in ("dense", "trimmed"):
        scores = report["accuracy"][f"{name}_onnx_scores"]
        assert set(scores) == {"fp32", "int8"}
        assert all(abs(round(24 * s["accuracy_mismatched"]) - 24 * s["accuracy_mismatched"]) < 1e-6
                   for s in scores.values())  # a share of the 24 mismatched rows
    text = (out / "report.md").read_text()
    assert "accuracy on dev mismatched" in text and "dev mismatched split (24 rows, never trained on)" in text
    return out


def test_mnli_through_run_reports_the_mismatched_accuracy(tiny_bert_dir, tmp_path):
    _mnli_run(tiny_bert_dir, tmp_path)


def test_resumed_mnli_run_tokenises_nothing(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    """Whether the mismatched split exists keys the evaluation; finding that out must not tokenise the data."""
    import toolchain.tasks
    from toolchain.cli import main

    out = _mnli_run(tiny_bert_dir, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run tokenised the task's data")

    monkeypatch.setattr(toolchain.tasks, "load_task_data", refuse)
    rc = main(["run", "--model", str(tiny_bert_dir), "--task", "mnli", "--data-dir", str(tmp_path / "data"),
               "--holdout-by", "premise", "--max-length", "32", "--out", str(out), *FAST])
    assert rc in (0, 1), capsys.readouterr().err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["stages_run"] == [] and "attempt-1/evaluate" in report["stages_skipped"]
    assert "accuracy_mismatched" in report["accuracy"]["trimmed_onnx_scores"]["int8"]  # kept from the first run
    assert report["data"]["extra_eval_rows"] == {"mismatched": 24}  # the split sizes survive the resume


def test_carving_keeps_keys_disjoint_and_is_seeded(tiny_bert_dir, tmp_path):
    from toolchain.tasks import CarveConfig, get_task, load_split
    from toolchain.tasks.base import carve_split

    spec = get_task("qnli")
    write_qnli(tmp_path, rows=80)
    rows, _ = load_split(spec, "dev", tmp_path)
    a_train, a_eval = carve_split(rows, spec, CarveConfig(by="question"), seed=0)
    b_train, b_eval = carve_split(rows, spec, CarveConfig(by="question"), seed=0)
    c_train, c_eval = carve_split(rows, spec, CarveConfig(by="question"), seed=1)
    assert not set(a_train["question"]) & set(a_eval["question"])
    assert len(a_train) + len(a_eval) == 80
    assert a_eval["question"] == b_eval["question"] and a_eval["question"] != c_eval["question"]


@pytest.mark.parametrize("args, needle", [
    (["--task", "qnli", "--holdout-by", "premise"], "no such column"),
    (["--task", "squad", "--holdout-by", "sentence"], "squad has no such key"),
    (["--task", "qnli"], "needs --holdout-by"),
    (["--task", "squad", "--holdout-by", "article", "--max-length", "32", "--doc-stride", "32"], "--doc-stride"),
])
def test_bad_task_settings_are_one_line_errors(tiny_bert_dir, tmp_path, args, needle):
    data = write_squad(write_qnli(tmp_path / "data"))
    out = tmp_path / "run"
    res = _run("--model", str(tiny_bert_dir), "--data-dir", str(data), "--out", str(out), "--train-from", "dev",
               *args, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error:") and needle in lines[-1] and "Traceback" not in res.stderr
    assert not (out / "dense" / "finetuned").exists()


def test_squad_bad_offset_is_skipped_and_counted(tiny_bert_dir, tmp_path):
    from toolchain.tasks import CarveConfig, load_task_data
    from toolchain.models import load_tokenizer

    data_dir = write_squad(tmp_path / "data", bad_offset=True)
    data = load_task_data("squad", load_tokenizer(tiny_bert_dir), data_dir=data_dir, max_length=32, doc_stride=8,
                          carve=CarveConfig(by="article"))
    assert [s["id"] for s in data.qa.skipped] == ["a0p0q0"]
    assert data.carved["train_rows"] + data.carved["eval_rows"] == 6 * 2 * 3 - 1
    assert data.qa.train_stats["features"] > data.qa.train_stats["examples"]  # long contexts: several windows


def test_qa_artifact_loads_in_optimum(squad_run):
    """ORTModelForQuestionAnswering loads the QA artifact folder as it is and computes the start and
    end logits deploy/'s session computes on the same windows."""
    import torch
    from optimum.onnxruntime import ORTModelForQuestionAnswering
    from transformers import AutoTokenizer

    from deploy.predict import PredictConfig, Predictor
    from deploy.qa import windows

    _, report, _ = squad_run
    folder = report["artifact"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = ORTModelForQuestionAnswering.from_pretrained(folder, file_name="model.onnx")
    predictor = Predictor(folder, PredictConfig(precision="fp32"))
    question, context = "where were the actors ?", "the actors were boring in paris ."
    window = windows(predictor.tokenizer, question, context, 32, 8)[0]
    enc = tokenizer(question, context, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == window.input_ids  # the same tokens from the saved tokenizer files
    out = model(**enc)
    ids = {k: np.asarray([v], dtype=np.int64) for k, v in (("input_ids", window.input_ids),
                                                              ("attention_mask", window.attention_mask),
                                                              ("token_type_ids", window.token_type_ids))}
    start, end = predictor.session.run(["start_logits", "end_logits"], ids)
    assert np.abs(out.start_logits.detach().numpy() - start).max() < 1e-5
    assert np.abs(out.end_logits.detach().numpy() - end).max() < 1e-5
    assert isinstance(out.start_logits, torch.Tensor)


def test_retrain_free_mode_on_a_fine_tuned_qa_model(squad_run, tmp_path):
    """The retraining-free mode takes a fine-tuned QA model (the run's dense one) to a smaller
    QA artifact scored with F1 and exact match."""
    out_dir, _, data = squad_run
    out = tmp_path / "rf"
    res = _run("--model", str(out_dir / "dense" / "finetuned"), "--task", "squad", "--data-dir", str(data),
               "--train-from", "dev", "--holdout-by", "article", "--max-length", "32", "--doc-stride", "8",
               "--no-finetune", "--keep", "0.5", "--calibration-samples", "32", "--bench-runs", "2",
               "--precision", "int8", "--out", str(out))
    assert res.returncode in (0, 1), res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["mode"]["mode"] == "retrain-free" and report["metric"] == "f1"
    assert report["after"]["trimmable_params"] <= 0.5 * report["before"]["trimmable_params"] + 1
    assert set(report["accuracy"]["trimmed_onnx_scores"]["int8"]) == {"f1", "exact_match"}
    assert read_manifest(Path(report["artifact"])).task_kind == "qa"


def test_qa_artifact_answers_in_a_transformers_pipeline_as_deploy_does(minilm_dir, tmp_path):
    """The packaged MiniLM with a seeded QA head, exported: transformers' question-answering
    pipeline over optimum's ORTModel gives the span deploy/ gives (one window each)."""
    from optimum.onnxruntime import ORTModelForQuestionAnswering
    from transformers import AutoTokenizer, pipeline

    from deploy.predict import PredictConfig, Predictor
    from toolchain.export import ExportConfig, export
    from toolchain.models import load_classifier, load_tokenizer

    model = load_classifier(minilm_dir, 2, id2label={0: "start", 1: "end"}, qa=True, seed=3)
    model.save_pretrained(tmp_path / "qa")
    load_tokenizer(minilm_dir).save_pretrained(tmp_path / "qa")
    art = export(tmp_path / "qa", tmp_path / "art", ExportConfig(task="squad", seq_len=128, optimize=True)).out_dir
    pipe = pipeline("question-answering", model=ORTModelForQuestionAnswering.from_pretrained(art),
                    tokenizer=AutoTokenizer.from_pretrained(art))
    predictor = Predictor(art, PredictConfig(precision="fp32"))
    context = "The Broncos defeated the Panthers 24 to 10 to earn their third Super Bowl title in Santa Clara."
    for question in ("Who won the game?", "Where was the game?", "What was the score?"):
        theirs = pipe(question=question, context=context, align_to_words=False, max_answer_len=30)
        ours = predictor.answers([(question, context)])[0]
        assert (theirs["start"], theirs["end"], theirs["answer"]) == (ours["start"], ours["end"], ours["text"])


def test_int8_choice_counts_the_answers_deploy_would_give(minilm_dir, tmp_path):
    """The export's fp32-vs-int8 agreement on QA inputs (what picks the α and the mixed graph) is the
    share of questions whose answer span deploy extracts the same from both files, not of start and
    end tokens judged apart."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from tokenizers import Tokenizer

    from deploy.qa import extract_answer, windows
    from toolchain import mixed_precision as mp
    from toolchain.export import ExportConfig, calibration_feeds, export
    from toolchain.models import load_classifier, load_tokenizer

    model = load_classifier(minilm_dir, 2, id2label={0: "start", 1: "end"}, qa=True, seed=5)
    model.save_pretrained(tmp_path / "qa")
    load_tokenizer(minilm_dir).save_pretrained(tmp_path / "qa")
    art = export(tmp_path / "qa", tmp_path / "art", ExportConfig(task="squad", seq_len=128, optimize=False)).out_dir
    fp32, int8 = art / "model.onnx", tmp_path / "int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    rng = random.Random(0)
    pairs = [(_sentence(rng, 6) + "?", _sentence(rng, 40)) for _ in range(40)]
    feeds = calibration_feeds(load_tokenizer(minilm_dir), pairs, 128, len(pairs))
    tok = Tokenizer.from_file(str(art / "tokenizer.json"))
    same = 0
    for (question, context), feed in zip(pairs, feeds):
        wins = windows(tok, question, context, 128, 32)
        assert len(wins) == 1 and wins[0].input_ids == feed["input_ids"][0].tolist()
        answers = [(a["start"], a["end"]) for a in (extract_answer(*[[o[0]] for o in outs], wins, context) for outs in
                   (mp._run(path, [feed])[0].values() for path in (fp32, int8)))]
        same += answers[0] == answers[1]
    assert mp.compare(fp32, {"int8": int8}, feeds)["int8"]["agreement"] == pytest.approx(same / len(pairs))


def test_qa_validation_split_is_carved_by_article_from_training_only(tiny_bert_dir, tmp_path):
    """SQuAD's validation split: whole training articles, none in train or eval, windowed like the eval
    split and scored by its own examples; the eval split is the one the carve made without it."""
    from transformers import AutoTokenizer

    from toolchain.tasks import CarveConfig, load_task_data

    data_dir = write_squad(tmp_path / "data", articles=12)
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    kwargs = dict(data_dir=data_dir, max_length=32, doc_stride=8, carve=CarveConfig(by="article", eval_fraction=0.25))
    plain = load_task_data("squad", tok, **kwargs)
    data = load_task_data("squad", tok, validation_fraction=0.3, **kwargs)
    titles = {split: {e.title for e in qa.examples} for split, qa in (("eval", data.qa), ("validation", data.validation_qa))}
    train_titles = {e.title for e in data.qa.train_examples}
    assert titles["validation"] and not titles["validation"] & train_titles and not titles["validation"] & titles["eval"]
    assert train_titles | titles["validation"] == {e.title for e in plain.qa.train_examples}
    assert [e.id for e in data.qa.examples] == [e.id for e in plain.qa.examples]  # eval untouched
    assert len(data.validation) == len(data.validation_qa.feature_example) > 0
    assert len(data.train) < len(plain.train) and len(data.train_texts) == len(data.qa.train_examples)
    assert data.validation_record["by"] == "article" and data.validation_record["validation_articles"] == len(
        titles["validation"])
    # the validation scorer reads the validation examples: logits of the validation windows score there
    n = len(data.validation)
    scores = data.validation_scorer().fn((np.zeros((n, 32)), np.zeros((n, 32))), None)
    assert set(scores) == {"f1", "exact_match"}


def test_squad_run_chooses_the_epoch_on_validation(tiny_bert_dir, tmp_path):
    data = write_squad(tmp_path / "data", articles=12)
    out = tmp_path / "run"
    res = _run("--model", str(tiny_bert_dir), "--task", "squad", "--data-dir", str(data), "--holdout-by", "article",
               "--max-length", "32", "--doc-stride", "8", "--out", str(out), "--validation-fraction", "0.3",
               *FAST, "--epochs", "2")  # the later flag wins
    assert res.returncode in (0, 1), res.stderr[-3000:]
    metrics = json.loads((out / "attempt-1" / "finetuned" / "metrics.json").read_text())
    selection = metrics["selection"]
    assert selection["split"] == "validation" and len(selection["per_epoch"]) == 2
    assert all(set(e["scores"]) >= {"f1", "exact_match"} for e in selection["per_epoch"])
    assert metrics["validation"]["by"] == "article"
    report = json.loads((out / "report.json").read_text())
    assert "validation split" in report["selection"]


def test_qa_validation_fraction_with_one_training_article_is_one_line(tiny_bert_dir, tmp_path):
    from transformers import AutoTokenizer

    from toolchain.errors import InputError
    from toolchain.tasks import CarveConfig, load_task_data

    data_dir = write_squad(tmp_path / "data", articles=2)  # one article to train on, one to evaluate
    with pytest.raises(InputError, match="of 1 training articles leaves no training or no validation data"):
        load_task_data("squad", AutoTokenizer.from_pretrained(str(tiny_bert_dir)), data_dir=data_dir, max_length=32,
                       doc_stride=8, carve=CarveConfig(by="article", eval_fraction=0.5), validation_fraction=0.2)


def test_run_refuses_a_validation_carve_before_any_stage(tiny_bert_dir, tmp_path):
    """The carve's rows are read before the first stage when --validation-fraction is set: one
    training article cannot give both splits, and the run writes nothing at all."""
    data = write_squad(tmp_path / "data", articles=2)
    out = tmp_path / "run"
    res = _run("--model", str(tiny_bert_dir), "--task", "squad", "--data-dir", str(data), "--holdout-by", "article",
               "--max-length", "32", "--doc-stride", "8", "--out", str(out), "--validation-fraction", "0.2",
               "--eval-fraction", "0.5", *FAST)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: --validation-fraction 0.2 of 1 training articles")
    assert not out.exists()
