"""SQuAD v1.1 in the toolchain: reading the official JSON (bad offsets skipped by id, bad files as
InputError), carving disjoint seeded splits, training features whose answer positions decode to
the gold text, and a round trip from perfect logits to exact match 1.0 with the real tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from toolchain.errors import InputError
from toolchain.tasks.qa import (
    SquadExample,
    answer_tokens,
    carve_examples,
    eval_features,
    predict_answers,
    read_squad,
    squad_scores,
    train_features,
)

REPO = Path(__file__).resolve().parents[1]
DEV = Path(os.environ.get("SENSIBERT_DATA_DIR", REPO.parent / "shared" / "data")) / "squad" / "dev-v1.1.json"

FILLER = ("The valley was farmed for centuries, and its villages traded wool and grain along the river "
          "with the towns of the coast. ")


def _qa(qid: str, question: str, context: str, *answers: str, start: int | None = None) -> dict:
    return {"id": qid, "question": question,
            "answers": [{"text": a, "answer_start": context.index(a) if start is None else start} for a in answers]}


def _toy_squad() -> dict:
    """Three articles with long paragraphs (several windows at max_length 48), several gold answers."""
    data = []
    for a, (title, town, founder, year) in enumerate([("Eastford", "Eastford", "Maria Holm", "1612"),
                                                      ("Westmere", "Westmere", "Jonas Berg", "1477"),
                                                      ("Northwick", "Northwick", "Ada Lind", "1830")]):
        paragraphs = []
        for p in range(2):
            context = (FILLER * (p + 1) + f"{town} was founded by {founder} in {year} beside the old stone "
                       f"bridge. " + FILLER + "Its market square holds a fountain carved from grey granite.")
            qas = [_qa(f"{a}{p}a", f"Who founded {town}?", context, founder, founder.split()[1]),
                   _qa(f"{a}{p}b", f"When was {town} founded?", context, year),
                   _qa(f"{a}{p}c", "What is the fountain carved from?", context, "grey granite", "granite")]
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": title, "paragraphs": paragraphs})
    return {"version": "1.1", "data": data}


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("squad") / "toy.json"
    path.write_text(json.dumps(_toy_squad()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from toolchain.models import load_tokenizer

    return load_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def dev():
    if not DEV.is_file():
        pytest.skip(f"real SQuAD dev file not found at {DEV}; set SENSIBERT_DATA_DIR to the shared/data folder")
    return read_squad(DEV)


# ---------------------------------------------------------------- reading

def test_read_squad_loads_every_question_with_all_golds(toy_file):
    examples, skipped = read_squad(toy_file)
    assert skipped == [] and len(examples) == 18
    first = examples[0]
    assert isinstance(first, SquadExample)
    assert (first.id, first.title, first.question) == ("00a", "Eastford", "Who founded Eastford?")
    assert first.answers == ("Maria Holm", "Holm")
    assert all(first.context[s:s + len(t)] == t for t, s in zip(first.answers, first.answer_starts))


def test_read_squad_skips_a_bad_offset_by_id(tmp_path):
    doc = _toy_squad()
    qas = doc["data"][1]["paragraphs"][0]["qas"]
    qas[1]["answers"].append({"text": "1477", "answer_start": 3})        # the second gold is misplaced
    qas[2]["answers"] = []
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    examples, skipped = read_squad(path)
    assert [s["id"] for s in skipped] == ["10b", "10c"]
    assert "not at offset 3" in skipped[0]["reason"] and "no gold answers" in skipped[1]["reason"]
    assert len(examples) == 16 and not {"10b", "10c"} & {e.id for e in examples}


@pytest.mark.parametrize("content,match", [
    (b'{"data": [', "not valid JSON"),
    (b'{"version": "1.1"}', "no 'data' list"),
    (b'[1, 2]', "no 'data' list"),
    (b'{"data": [{"title": "x"}]}', r"data\[0\] has no list field 'paragraphs'"),
    (b'{"data": [], "note": "caf\xe9"}', "not UTF-8"),
])
def test_read_squad_bad_files_raise_input_error(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match) as info:
        read_squad(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_squad_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found; pass the official SQuAD"):
        read_squad(tmp_path / "nope.json")


def test_read_real_dev_file(dev):
    examples, skipped = dev
    assert len(examples) + len(skipped) == 10570
    assert len(examples) > 10500
    assert len({e.title for e in examples}) == 48
    assert len({e.id for e in examples}) == len(examples)


# ---------------------------------------------------------------- carving

@pytest.mark.parametrize("by,key", [("article", "title"), ("context", "context"), ("question", "id")])
def test_carving_is_disjoint_and_seeded(toy_file, by, key):
    examples, _ = read_squad(toy_file)
    train, held = carve_examples(examples, by, 0.34, seed=0)
    assert train and held and len(train) + len(held) == len(examples)
    assert not {getattr(e, key) for e in train} & {getattr(e, key) for e in held}
    assert carve_examples(examples, by, 0.34, seed=0) == (train, held)
    splits = {tuple(e.id for e in carve_examples(examples, by, 0.34, seed=s)[1]) for s in range(6)}
    assert len(splits) > 1                                                   # other seeds, other splits


def test_carving_rejects_unknown_key_and_fraction(toy_file):
    examples, _ = read_squad(toy_file)
    with pytest.raises(InputError, match="--holdout-by 'title': squad has no such key; choose one of: "
                                         "article, context, question"):
        carve_examples(examples, "title", 0.2, 0)
    with pytest.raises(InputError, match="--eval-fraction 1.5"):
        carve_examples(examples, "article", 1.5, 0)


# ---------------------------------------------------------------- features

def _check_positions(examples, features, stats, tokenizer, max_length, stride):
    """Every answer position decodes (through the window offsets) to the gold answer's span."""
    from deploy.qa import windows

    row = exact = with_answer = 0
    for example in examples:
        gold_start = example.answer_starts[0]
        gold_end = gold_start + len(example.answers[0])
        for w in windows(tokenizer.backend_tokenizer, example.question, example.context, max_length, stride):
            assert features["input_ids"][row] == w.input_ids
            s, e = features["start_positions"][row], features["end_positions"][row]
            row += 1
            if (s, e) == (0, 0):
                continue
            with_answer += 1
            assert w.offsets[s] is not None and w.offsets[e] is not None and s <= e
            start_char, end_char = w.offsets[s][0], w.offsets[e][1]
            assert start_char <= gold_start and end_char >= gold_end          # the tokens hold the answer
            exact += example.context[start_char:end_char] == example.answers[0]
    assert row == stats["features"] == len(features["start_positions"])
    assert stats["windows_without_answer"] == stats["features"] - with_answer
    return exact, with_answer


def test_train_features_on_toy_examples_decode_to_gold(toy_file, tokenizer):
    examples, _ = read_squad(toy_file)
    features, stats = train_features(examples, tokenizer, 48, 16)
    assert set(features) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
    assert stats["examples"] == 18 and stats["features"] > 18 and stats["examples_without_answer_window"] == 0
    exact, with_answer = _check_positions(examples, features, stats, tokenizer, 48, 16)
    assert exact == with_answer >= 18                                        # token-aligned golds: exact


def test_train_features_on_real_examples_decode_to_gold(dev, tokenizer):
    examples = dev[0][:40]
    features, stats = train_features(examples, tokenizer, 64, 16)
    assert stats["examples"] == 40 and stats["features"] > 40
    exact, with_answer = _check_positions(examples, features, stats, tokenizer, 64, 16)
    assert with_answer >= 40 - stats["examples_without_answer_window"]
    assert exact >= 0.9 * with_answer        # the rest: golds cut inside a word piece ("gold" of "golden")


def test_answer_past_truncation_is_counted_not_fatal(tokenizer):
    context = "The key is under the mat. " + FILLER
    far = SquadExample(id="far", title="t", context=context, question="Where is the key?",
                       answers=("nowhere",), answer_starts=(len(context),))
    _, stats = train_features([far], tokenizer, 32, 8)
    assert stats["examples_without_answer_window"] == 1
    assert stats["windows_without_answer"] == stats["features"] > 1


# ---------------------------------------------------------------- round trip

def _perfect_logits(examples, per_example, features):
    """Logit rows (padded to one width) with a large value at the gold start/end in the windows holding it."""
    width = max(len(ids) for ids in features["input_ids"]) + 3
    starts = np.zeros((len(features["input_ids"]), width), np.float32)
    ends = np.zeros_like(starts)
    row = 0
    for example, wins in zip(examples, per_example):
        gold = example.answer_starts[0], example.answer_starts[0] + len(example.answers[0])
        for w in wins:
            span = answer_tokens(w, *gold)
            if span is not None:
                starts[row, span[0]] = ends[row, span[1]] = 10.0
            row += 1
    return starts, ends


def test_round_trip_perfect_logits_score_exact_match_one(toy_file, tokenizer):
    examples, _ = read_squad(toy_file)
    features, per_example = eval_features(examples, tokenizer, 48, 16)
    assert features["example_index"] == [i for i, w in enumerate(per_example) for _ in w]
    starts, ends = _perfect_logits(examples, per_example, features)
    predictions = predict_answers(starts, ends, features["example_index"], per_example, examples)
    assert predictions == {e.id: e.answers[0] for e in examples}
    assert squad_scores(predictions, examples) == {"exact_match": 1.0, "f1": 1.0, "count": 18}
    with pytest.raises(InputError, match="logit rows"):
        predict_answers(starts[:-1], ends[:-1], features["example_index"][:-1], per_example, examples)


def test_round_trip_on_real_examples(dev, tokenizer):
    import random

    examples = random.Random(0).sample(dev[0], 200)
    features, per_example = eval_features(examples, tokenizer, 128, 32)
    assert len(features["input_ids"]) > 200                                  # some contexts need windows
    starts, ends = _perfect_logits(examples, per_example, features)
    scores = squad_scores(predict_answers(starts, ends, features["example_index"], per_example, examples),
                          examples)
    # not quite 1.0 in general: a few first golds start inside a word piece ("8" of "18")
    assert scores["count"] == 200 and scores["exact_match"] >= 0.98 and scores["f1"] >= 0.98
