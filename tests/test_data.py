"""Task registry and data loading: GLUE TSV parsing (quoting off, byte-exact fields), errors that
name file and line, source order, seeded subsets, tokenisation, the demo set and the real data."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from toolchain.errors import InputError
from toolchain.tasks import DATA_ENV, TASKS, TaskSpec, base, get_task, load_split, load_task_data, register_task
from toolchain.tasks.base import read_glue_tsv

# One small GLUE-format file per registered task, with the real GLUE headers (MNLI's full
# 16-column dev_matched header, QQP's id columns) and awkward text: a leading `"`, an unbalanced
# quote, a trailing space, a comma and non-ASCII characters.
SAMPLES: dict[str, tuple[str, str]] = {
    "sst2": ("dev.tsv", "sentence\tlabel\n"
                        "a warm , funny little film about two stubborn sisters . \t1\n"
                        "tedious from start to finish \t0\n"
                        "\"the plot , \" he said , is n't there . \t0\n"),
    "qnli": ("dev.tsv", "index\tquestion\tsentence\tlabel\n"
                        "0\tWhat opened after the new bridge was finished?\t"
                        "Once the bridge was finished, the new harbour road opened.\tentailment\n"
                        "1\tWhich town is first along the river?\t"
                        "\" The river flows past \"Eastford, the first town.\tnot_entailment\n"
                        "2\tWhere is Zürich?\t\"Zürich \"is\" in Switzerland\"\tentailment\n"),
    "mnli": ("dev_matched.tsv",
             "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
             "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t"
             "label5\tgold_label\n"
             "0\t63735\t63735n\tslate\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThe new rights are nice enough\t"
             "Everyone really likes the newest benefits \tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n"
             "1\t91383\t91383c\tgovernment\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThis site includes a list.\t"
             "\"The site does not have\" anything\tcontradiction\tcontradiction\tcontradiction\tcontradiction\t"
             "contradiction\tcontradiction\n"
             "2\t755\t755e\ttelephone\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tyeah i know\tI know.\tentailment\t"
             "entailment\tentailment\tentailment\tentailment\tentailment\n"),
    "qqp": ("dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                       "201359\t303345\t303346\tWhy are African-Americans so beautiful?\t"
                       "Why are hispanics so beautiful?\t0\n"
                       "263843\t69383\t380476\tI want to pursue PhD in Computer Science about social network,"
                       " what is the open problem?\t\"How do I start a PhD?\t1\n"),
}
EXPECTED_LABELS = {"sst2": [1, 0, 0], "qnli": [0, 1, 0], "mnli": [1, 2, 0], "qqp": [0, 1]}


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    """Tests choose their own sources: the caller's $SENSIBERT_DATA_DIR must not leak in."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_task(folder: Path, task: str, text: str | None = None, file_name: str | None = None) -> Path:
    name, sample = SAMPLES[task]
    path = folder / (file_name or name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((sample if text is None else text).encode("utf-8"))
    return path


def raw_fields(text: str, spec: TaskSpec) -> list[tuple[str, ...]]:
    """Return the text fields of each data line, split on TAB exactly as GLUE means it."""
    header, *rows = text.rstrip("\n").split("\n")
    cols = header.split("\t")
    where = [cols.index(c) for c in spec.columns]
    return [tuple(line.split("\t")[i] for i in where) for line in rows]


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- registry

def test_every_registered_task_has_a_sample():
    glue = {name for name, spec in TASKS.items() if not spec.qa}  # squad: tests/test_squad.py, test_tasks.py
    assert set(SAMPLES) == glue == set(EXPECTED_LABELS)
    assert get_task("squad").kind == "qa" and get_task("squad").metric == "f1"


def test_task_specs():
    assert get_task("sst2").kind == "single"
    assert {get_task(t).kind for t in ("qnli", "mnli", "qqp")} == {"pair"}
    assert get_task("SST-2") is get_task("sst2")
    assert get_task("qnli").label_names == ("entailment", "not_entailment")
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("mnli").dev_split == "dev_matched"
    assert get_task("qqp").label_names == ("not_duplicate", "duplicate")
    assert get_task("sst2").label_names == ("negative", "positive")


def test_unknown_task_lists_choices():
    message = error_of(get_task, "cola")
    assert "unknown task 'cola'" in message and "mnli, qnli, qqp, squad, sst2" in message
    assert "unknown task 'cola'" in error_of(load_split, "cola", "dev")


def test_unknown_split(tmp_path):
    write_task(tmp_path, "sst2")
    assert "unknown split 'test'" in error_of(load_split, "sst2", "test", tmp_path)


def test_duplicate_registration_is_a_bug():
    with pytest.raises(ValueError):
        register_task(TaskSpec("sst2", "SST-2", ("sentence",), ("negative", "positive"), handler=get_task("sst2").handler))


# ---------------------------------------------------------------- TSV parsing

@pytest.mark.parametrize("task", sorted(SAMPLES))
def test_tsv_fields_are_byte_exact(tmp_path, task):
    spec = get_task(task)
    path = write_task(tmp_path, task)
    ds, source = load_split(task, "dev", tmp_path)
    assert source == f"tsv:{path}"
    assert ds.column_names == [*spec.text_fields, "label"]
    assert ds["label"][:] == EXPECTED_LABELS[task]
    got = [tuple(row[f] for f in spec.text_fields) for row in ds]
    assert got == raw_fields(SAMPLES[task][1], spec)
    assert ds.features["label"].names == list(spec.label_names)


def test_qnli_quotes_survive(tmp_path):
    write_task(tmp_path, "qnli")
    ds, _ = load_split("qnli", "validation", tmp_path)
    assert ds[1]["sentence"] == "\" The river flows past \"Eastford, the first town."
    assert ds[2]["sentence"] == "\"Zürich \"is\" in Switzerland\""


def test_sst2_trailing_space_and_crlf(tmp_path):
    write_task(tmp_path, "sst2", "sentence\tlabel\r\ngood fun \t1\r\n\r\nbad \t0\r\n")
    ds, _ = load_split("sst2", "dev", tmp_path)
    assert ds["sentence"][:] == ["good fun ", "bad "] and ds["label"][:] == [1, 0]


def test_data_root_layout_and_env(tmp_path, monkeypatch):
    root = tmp_path / "root"
    write_task(root / "glue" / "SST-2", "sst2")
    ds, source = load_split("sst2", "dev", root)
    assert len(ds) == 3 and source.endswith("glue/SST-2/dev.tsv")
    monkeypatch.setenv(DATA_ENV, str(root))
    ds, source = load_split("sst2", "dev")
    assert len(ds) == 3 and source == f"tsv:{root / 'glue' / 'SST-2' / 'dev.tsv'}"


def test_explicit_dir_wins_over_env(tmp_path, monkeypatch):
    write_task(tmp_path / "env" / "glue" / "SST-2", "sst2")
    mine = write_task(tmp_path / "mine", "sst2", "sentence\tlabel\nonly row \t1\n")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    ds, source = load_split("sst2", "dev", tmp_path / "mine")
    assert len(ds) == 1 and source == f"tsv:{mine}"


def test_wrong_column_count_names_file_and_line(tmp_path):
    path = write_task(tmp_path, "qnli", SAMPLES["qnli"][1] + "3\tWhere?\tsplit\tby a tab\tentailment\n")
    message = error_of(load_split, "qnli", "dev", tmp_path)
    assert f"{path}:5:" in message and "5 tab-separated fields but the header has 4" in message


def test_unknown_label_names_file_and_line(tmp_path):
    path = write_task(tmp_path, "sst2", "sentence\tlabel\nfine \t1\nhm \tpositive\n")
    message = error_of(load_split, "sst2", "dev", tmp_path)
    assert f"{path}:3:" in message and "unknown label 'positive'" in message and "0, 1" in message
    path = write_task(tmp_path, "qnli", "index\tquestion\tsentence\tlabel\n0\tq\ts\tmaybe\n")
    message = error_of(load_split, "qnli", "dev", tmp_path)
    assert f"{path}:2:" in message and "entailment, not_entailment" in message


def test_missing_header(tmp_path):
    path = write_task(tmp_path, "sst2", "a fine film \t1\nbad \t0\n")
    message = error_of(load_split, "sst2", "dev", tmp_path)
    assert f"{path}:1:" in message and "header row has no column 'sentence'" in message


def test_empty_split(tmp_path):
    path = write_task(tmp_path, "sst2", "sentence\tlabel\n")
    message = error_of(load_split, "sst2", "dev", tmp_path)
    assert str(path) in message and "no rows" in message
    write_task(tmp_path, "sst2", "")
    assert "header row has no column" in error_of(load_split, "sst2", "dev", tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"sentence\tlabel\ncaf\xe9 \t1\n")
    assert f"{path}: not UTF-8" in error_of(load_split, "sst2", "dev", tmp_path)


def test_missing_file_says_which(tmp_path):
    write_task(tmp_path, "qnli")  # dev only, as in shared/data
    message = error_of(load_split, "qnli", "train", tmp_path)
    assert f"{tmp_path / 'train.tsv'}: file not found" in message and "QNLI/train.tsv" in message
    message = error_of(load_split, "sst2", "dev", tmp_path / "absent")
    assert "absent not found" in message


def test_env_missing_file_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    write_task(tmp_path / "glue" / "QNLI", "qnli")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    message = error_of(load_split, "qnli", "train")
    assert f"{tmp_path / 'glue' / 'QNLI' / 'train.tsv'}: file not found" in message and DATA_ENV in message
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    assert f"{DATA_ENV}=" in error_of(load_split, "sst2", "dev")


def test_no_source_for_a_task_without_demo():
    message = error_of(load_split, "qnli", "dev")
    assert "no data for task qnli" in message and DATA_ENV in message and "offline" in message


def test_unreachable_hub_fails_fast(monkeypatch):
    import time

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")  # port 1: connection refused at once
    base._hub_reachable.cache_clear()
    try:
        start = time.monotonic()
        message = error_of(load_split, "mnli", "dev")
        assert "unreachable" in message and time.monotonic() - start < 10
    finally:
        base._hub_reachable.cache_clear()


def test_read_glue_tsv_directly(tmp_path):
    path = write_task(tmp_path, "mnli")
    columns = read_glue_tsv(path, get_task("mnli"))
    assert columns["premise"][0] == "The new rights are nice enough"
    assert columns["hypothesis"][1] == "\"The site does not have\" anything"
    assert columns["label"] == [1, 2, 0]


# ---------------------------------------------------------------- demo set

def test_demo_set(caplog):
    with caplog.at_level(logging.WARNING, logger="toolchain.tasks.single"):
        train, source = load_split("sst2", "train")
    assert source == "demo:sst2/train"
    assert any("DEMO" in r.getMessage() and DATA_ENV in r.getMessage() for r in caplog.records)
    dev, dev_source = load_split("sst2", "dev")
    assert dev_source == "demo:sst2/dev"
    assert 200 <= len(train) <= 1000 and 50 <= len(dev) <= 200
    for ds in (train, dev):
        labels = ds["label"][:]
        assert set(labels) == {0, 1} and abs(labels.count(0) - labels.count(1)) <= 1
        assert len(set(ds["sentence"][:])) == len(ds)
    assert not set(train["sentence"][:]) & set(dev["sentence"][:])
    again, _ = load_split("sst2", "train")
    assert again.to_dict() == train.to_dict()


def test_demo_is_not_copied_sst2(shared_data):
    """The demo sentences are generated: none of them is a row of the real SST-2."""
    demo = {r["sentence"] for split in ("train", "dev") for r in load_split("sst2", split)[0]}
    real, _ = load_split("sst2", "train", shared_data)
    assert not demo & set(real["sentence"][:])


# ---------------------------------------------------------------- tokenised task data

@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert_dir))


def sst2_dir(tmp_path: Path, n_train: int = 40) -> Path:
    words = ["good", "bad", "great", "awful", "fun", "boring", "the", "movie", "plot", "is"]
    rows = "".join(f"{' '.join(words[(i + k) % 10] for k in range(1 + i % 7))} \t{i % 2}\n" for i in range(n_train))
    write_task(tmp_path, "sst2", "sentence\tlabel\n" + rows, "train.tsv")
    write_task(tmp_path, "sst2")
    return tmp_path


def test_tokenised_columns_and_dynamic_padding(tmp_path, tokenizer):
    task = load_task_data("sst2", tokenizer, data_dir=sst2_dir(tmp_path))
    assert task.task is get_task("sst2")
    assert set(task.train.column_names) == set(task.eval.column_names) == \
        {"input_ids", "attention_mask", "token_type_ids", "labels"}
    lengths = [len(ids) for ids in task.train["input_ids"][:]]
    assert len(set(lengths)) > 1, "rows must not be padded in the dataset"
    assert task.train["labels"][:] == [i % 2 for i in range(40)]
    batch = task.collator([task.train[i] for i in range(6)])
    longest = max(lengths[:6])
    assert tuple(batch["input_ids"].shape) == (6, longest)
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths[:6]
    assert batch["labels"].tolist() == [0, 1, 0, 1, 0, 1]
    assert task.source == f"tsv:{tmp_path / 'train.tsv'}; tsv:{tmp_path / 'dev.tsv'}"


def test_truncation(tmp_path, tokenizer):
    write_task(tmp_path, "sst2", "sentence\tlabel\n" + "the movie is very good " * 20 + "\t1\nbad \t0\n")
    task = load_task_data("sst2", tokenizer, data_dir=tmp_path, max_length=9, need_train=False)
    assert task.train is None
    first, second = task.eval[0]["input_ids"], task.eval[1]["input_ids"]
    assert len(first) == 9 and first[0] == tokenizer.cls_token_id and first[-1] == tokenizer.sep_token_id
    assert len(second) < 9


def test_pair_task_segments(tmp_path, tokenizer):
    write_task(tmp_path, "qnli")
    task = load_task_data("qnli", tokenizer, data_dir=tmp_path, need_train=False)
    row = task.eval[0]
    assert row["input_ids"].count(tokenizer.sep_token_id) == 2
    assert 0 in row["token_type_ids"] and 1 in row["token_type_ids"]
    assert task.eval["labels"][:] == [0, 1, 0]


def test_subset_is_seeded_and_hashed(tmp_path, tokenizer):
    folder = sst2_dir(tmp_path)
    load = lambda **kw: load_task_data("sst2", tokenizer, data_dir=folder, max_train_samples=10, **kw)  # noqa: E731
    a, b, c = load(seed=0), load(seed=0), load(seed=1)
    assert len(a.train) == 10 and len(a.eval) == 3
    assert a.train["input_ids"][:] == b.train["input_ids"][:] and a.data_hash == b.data_hash
    assert a.train["input_ids"][:] != c.train["input_ids"][:] and a.data_hash != c.data_hash
    full = load_task_data("sst2", tokenizer, data_dir=folder, max_train_samples=1000)
    assert len(full.train) == 40
    assert load(seed=0, max_length=16).data_hash != a.data_hash
    eval_only = load_task_data("sst2", tokenizer, data_dir=folder, max_eval_samples=2, need_train=False)
    assert len(eval_only.eval) == 2


def test_hash_is_content_based(tmp_path, tokenizer):
    """The same rows in another folder hash the same; one changed character changes the hash."""
    one = load_task_data("sst2", tokenizer, data_dir=sst2_dir(tmp_path / "a"))
    two = load_task_data("sst2", tokenizer, data_dir=sst2_dir(tmp_path / "b"))
    assert one.data_hash == two.data_hash and len(one.data_hash) == 64
    dev = tmp_path / "b" / "dev.tsv"
    dev.write_text(dev.read_text().replace("tedious", "tediouS"))
    assert load_task_data("sst2", tokenizer, data_dir=tmp_path / "b").data_hash != one.data_hash


@pytest.mark.parametrize("kwargs,expect", [({"max_length": 1}, "max length 1"),
                                           ({"max_train_samples": 0}, "max_train_samples 0"),
                                           ({"max_eval_samples": -3}, "max_eval_samples -3")])
def test_bad_settings(tmp_path, tokenizer, kwargs, expect):
    assert expect in error_of(load_task_data, "sst2", tokenizer, data_dir=sst2_dir(tmp_path), **kwargs)


def test_demo_task_data(tokenizer):
    task = load_task_data("sst2", tokenizer, max_length=32)
    assert task.source == "demo:sst2/train; demo:sst2/dev"
    assert set(task.eval["labels"][:]) == {0, 1}
    assert task.data_hash == load_task_data("sst2", tokenizer, max_length=32).data_hash


# ---------------------------------------------------------------- the real data

def test_real_sst2_dev(shared_data):
    ds, source = load_split("sst2", "dev", shared_data)
    labels = ds["label"][:]
    assert len(ds) == 872 and sum(labels) == 444 and source.endswith("glue/SST-2/dev.tsv")
    assert all(s.endswith(" ") for s in ds["sentence"][:])  # GLUE's trailing space is kept


def test_real_qnli_dev(shared_data):
    path = shared_data / "glue" / "QNLI" / "dev.tsv"
    ds, _ = load_split("qnli", "dev", shared_data / "glue" / "QNLI")
    labels = ds["label"][:]
    assert len(ds) == 5463 and labels.count(0) == 2702 and labels.count(1) == 2761
    sentences = ds["sentence"][:]
    quoted = [s for s in sentences if s.startswith('"')]
    assert len(quoted) == 19
    assert [(q, s) for q, s in zip(ds["question"][:], sentences)] == raw_fields(path.read_text(), get_task("qnli"))
    rebuilt = "index\tquestion\tsentence\tlabel\n" + "".join(
        f"{line.split(chr(9))[0]}\t{q}\t{s}\t{('entailment', 'not_entailment')[y]}\n"
        for line, q, s, y in zip(path.read_text().split("\n")[1:], ds["question"][:], sentences, labels))
    assert rebuilt.encode() == path.read_bytes()  # every byte of every field survives


def test_real_qnli_has_no_train_split(shared_data, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(shared_data))
    message = error_of(load_split, "qnli", "train")
    assert "glue/QNLI/train.tsv: file not found" in message
    ds, source = load_split("qnli", "dev")
    assert len(ds) == 5463 and source.startswith("tsv:")
