"""Every supported encoder family through every stage, on tiny random models built from configs.

Each family gets a saved pre-trained-style encoder (no task head) with a real tokenizer of its
kind: WordPiece for BERT, ELECTRA and DistilBERT, byte-level BPE for RoBERTa. ``sensibert run``
takes it through analysis, planning, teacher-first fine-tuning, shrink, export (fused, int8)
and the device-side bench; the parity gates are the run's own (masked = shrunk = ONNX fp32,
int8 label agreement). The shrunk checkpoint must reload with the Auto classes and the artifact
folder in optimum's ORTModel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORDS = ("the a movie film is was good bad great awful fun boring not very it plot actors story best worst "
         "love hate dull brilliant what who where when why how did does paris france city river capital "
         "question answer").split()
COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
FAMILIES = ("roberta", "electra", "distilbert")


def _wordpiece(out: Path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] \
        + list("abcdefghijklmnopqrstuvwxyz'.,?!-")
    vocab = list(dict.fromkeys(vocab))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)


def _byte_bpe(out: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 20 + list(WORDS), vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.save_model(str(out))
    return RobertaTokenizerFast(vocab_file=str(out / "vocab.json"), merges_file=str(out / "merges.txt"))


def family_config(family: str, vocab_size: int):
    """Return a tiny random config of ``family`` (odd sizes: hidden 32, 4 heads, FFN 37)."""
    from transformers import BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig

    if family == "bert":
        return BertConfig(vocab_size=vocab_size, **COMMON)
    if family == "roberta":
        return RobertaConfig(vocab_size=vocab_size, **{**COMMON, "max_position_embeddings": 66}, type_vocab_size=1,
                             pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if family == "electra":
        return ElectraConfig(vocab_size=vocab_size, embedding_size=16, **COMMON)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
    raise ValueError(family)


def build_family_dir(family: str, out: Path) -> Path:
    """Save a tiny pre-trained-style encoder of ``family`` with its tokenizer into ``out``."""
    import torch
    from transformers import AutoModel

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _byte_bpe(out) if family == "roberta" else _wordpiece(out)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    AutoModel.from_config(family_config(family, len(tokenizer))).save_pretrained(out)
    return out


# ---------------------------------------------------------------- unit: masked = shrunk, counts = costs.py

def _tiny_task_model(family: str, qa: bool):
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = family_config(family, 99)
    config.num_labels = 2
    auto = AutoModelForQuestionAnswering if qa else AutoModelForSequenceClassification
    return auto.from_config(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("qa", [False, True], ids=["classifier", "qa"])
@pytest.mark.parametrize("family", ("bert",) + FAMILIES)
def test_shrunk_model_computes_the_masked_model_and_costs_count_it(family, qa):
    import torch

    from toolchain.costs import shape_from_config, total_params
    from toolchain.families import canonical_view, family_of
    from toolchain.masks import MaskSet, attach_masks
    from toolchain.shrink import shrink

    model = _tiny_task_model(family, qa)
    assert family_of(model).name == ("roberta" if family == "roberta" else family)
    dense_shape = shape_from_config(canonical_view(model.config), num_labels=2, pooler=not qa)  # no architectures yet
    assert total_params(dense_shape) == sum(p.numel() for p in model.parameters())
    masks = MaskSet.from_lists(4, 37, [[0, 2], []], [[1, 5, 7], list(range(37))])  # layer 1: no heads at all
    attach_masks(model, masks)
    ids = torch.randint(5, 99, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    ids[1, 7:] = model.config.pad_token_id or 0
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask)
        small = shrink(model, masks)
        got = small(input_ids=ids, attention_mask=mask)
    names = ("start_logits", "end_logits") if qa else ("logits",)
    for name in names:
        a, b = getattr(ref, name), getattr(got, name)
        if qa:
            a, b = a * mask, b * mask
        assert float((a - b).abs().max()) < 1e-5
    shape = shape_from_config(canonical_view(small.config))
    assert shape.heads == (2, 0) and shape.ffn == (3, 37)
    assert total_params(shape) == sum(p.numel() for p in small.parameters())
    assert small.config.family == family_of(model).name


# ---------------------------------------------------------------- end to end: sensibert run on each family

FAST = ["--task", "sst2", "--max-train-samples", "64", "--max-eval-samples", "32", "--epochs", "1",
        "--batch-size", "16", "--sensitivity-steps", "4", "--bench-runs", "3", "--max-length", "32",
        "--keep", "0.5", "--precision", "int8"]


def _sensibert(*args: str, module: str = "toolchain") -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "SENSIBERT_DATA_DIR"}  # the demo set
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=900,
                          env={**environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module", params=FAMILIES)
def family_run(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(family)
    model_dir = build_family_dir(family, root / "model")
    out = root / "run"
    result = _sensibert("run", "--model", str(model_dir), "--out", str(out), *FAST)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    return family, model_dir, out


def test_every_stage_passes_its_gates_on_each_family(family_run):
    from toolchain.families import get_family

    family, _, out = family_run
    report = json.loads((out / "report.json").read_text())
    artifact = Path(report["artifact"])
    export = json.loads((artifact / "export.json").read_text())
    assert export["parity"]["fp32"]["passed"] and export["parity"]["int8"]["passed"]
    assert export["encoder_params_onnx"] == export["encoder_params_expected"]
    assert export["op_counts"]["fp32"]["Attention"] >= 1  # the fuser recognised the family's attention
    shrink = json.loads((artifact.parent / "trimmed" / "shrink.json").read_text())
    assert shrink["max_abs_diff"] <= shrink["tolerance"] and shrink["params_after"] < shrink["params_before"]
    assert report["accuracy"]["trimmed_onnx"]["fp32"] == pytest.approx(report["accuracy"]["trimmed_pytorch"])
    config = json.loads((artifact / "config.json").read_text())
    assert config["sensibert"]["family"] == get_family(family).name


def test_trimmed_checkpoint_reloads_with_auto_classes_and_artifact_in_optimum(family_run):
    import numpy as np
    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import toolchain.modeling  # noqa: F401  registers sensibert with the Auto classes

    _, _, out = family_run
    artifact = Path(json.loads((out / "report.json").read_text())["artifact"])
    trimmed = AutoModelForSequenceClassification.from_pretrained(str(artifact.parent / "trimmed")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(artifact))
    batch = tokenizer(["a good movie", "the plot was dull and boring"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = trimmed(**batch).logits.numpy()
    ort = ORTModelForSequenceClassification.from_pretrained(str(artifact), file_name="model.onnx")
    got = ort(**batch).logits.numpy()
    assert np.abs(ref - got).max() < 1e-4


def test_deploy_predicts_with_the_family_artifact(family_run, tmp_path):
    _, _, out = family_run
    artifact = json.loads((out / "report.json").read_text())["artifact"]
    inputs = tmp_path / "in.txt"
    inputs.write_text("a good movie\nthe plot was dull\n")
    for precision in ("fp32", "int8"):
        result = _sensibert("predict", artifact, "--input", str(inputs), "--precision", precision, module="deploy")
        assert result.returncode == 0, result.stderr[-2000:]
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        assert len(rows) == 2


def test_retraining_free_mode_on_each_family(family_run):
    family, _, out = family_run
    dense = out / "dense" / "finetuned"
    result = _sensibert("run", "--model", str(dense), "--out", str(out.parent / "free"), "--no-finetune",
                        *FAST)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads((out.parent / "free" / "report.json").read_text())
    export = json.loads((Path(report["artifact"]) / "export.json").read_text())
    assert export["parity"]["fp32"]["passed"]


# ---------------------------------------------------------------- bad input

def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[-1]


def test_unsupported_family_is_one_line_naming_the_supported_ones(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)).save_pretrained(tmp_path / "gpt2")
    line = _one_line_error(_sensibert("analyze", "--model", str(tmp_path / "gpt2"), "--task", "sst2",
                                      "--out", str(tmp_path / "s.json")))
    assert "'gpt2' is not supported" in line
    for name in ("bert", "distilbert", "electra", "roberta", "xlm-roberta"):
        assert name in line
    assert not (tmp_path / "s.json").exists()


def test_roberta_model_with_a_bert_tokenizer_is_refused(tmp_path):
    import shutil

    roberta = build_family_dir("roberta", tmp_path / "roberta")
    bert = build_family_dir("bert", tmp_path / "bert")
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (roberta / name).unlink(missing_ok=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(bert / name, roberta / name)
    line = _one_line_error(_sensibert("analyze", "--model", str(roberta), "--task", "sst2",
                                      "--out", str(tmp_path / "s.json")))
    assert "tokenizer" in line and "another model" in line
    assert not (tmp_path / "s.json").exists()


def test_teacher_of_another_family_is_refused():
    from toolchain.errors import InputError
    from toolchain.finetune import check_teacher

    with pytest.raises(InputError, match="distillation cannot map them"):
        check_teacher(family_config("roberta", 99), family_config("bert", 99))
    check_teacher(family_config("electra", 99), family_config("electra", 99))  # same family: accepted


@pytest.mark.parametrize("family", FAMILIES)
def test_question_answering_model_of_each_family_exports_fused_and_int8(family, tmp_path):
    import numpy as np
    import onnxruntime as ort
    import torch

    from toolchain.export import ExportConfig, export
    from toolchain.masks import MaskSet, attach_masks
    from toolchain.models import load_classifier, load_tokenizer
    from toolchain.parity import check_batches, torch_outputs
    from toolchain.shrink import shrink

    encoder = build_family_dir(family, tmp_path / "encoder")
    model = load_classifier(encoder, 2, id2label={0: "start", 1: "end"}, qa=True).eval()
    with torch.no_grad():  # as if trained: fresh LayerNorms are all equal, and the ONNX exporter shares equal tensors
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    masks = MaskSet.from_lists(4, 37, [[1, 3], [0, 1, 2]], [[0, 4, 9, 30], list(range(20))])
    attach_masks(model, masks)
    small = shrink(model, masks)
    small.save_pretrained(tmp_path / "small")
    tokenizer = load_tokenizer(encoder)
    tokenizer.save_pretrained(tmp_path / "small")
    result = export(tmp_path / "small", tmp_path / "onnx",
                    ExportConfig(optimize=True, quantize="int8", task="squad", seq_len=32))
    assert result.parity["fp32"].passed and result.parity["int8"].passed
    assert result.op_counts["fp32"]["Attention"] == 2
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    assert ("token_type_ids" in names) == (family == "electra")  # RoBERTa and DistilBERT have no token types
    batch = check_batches(tokenizer, 32, 64)[0]
    ref = torch_outputs(small, batch)["start_logits"]
    got = session.run(["start_logits"], {k: v for k, v in batch.items() if k in names})[0]
    assert np.abs(np.where(batch["attention_mask"] > 0, ref - got, 0)).max() < 1e-4
