"""deploy/ runs where torch and transformers cannot be imported (the device side of the project).

The artifact here is built without torch: a mean-pooled embedding classifier written with
onnx.helper and a word-level tokenizer built with tokenizers, so it also checks that the
runner feeds only the inputs a model declares (no token_type_ids here).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy.manifest import write_manifest

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + "the movie was good bad great dull fun plot".split()
LABELS = ["negative", "neutral", "positive"]


def _toy_artifact(out):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    out.mkdir()
    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.standard_normal((len(VOCAB), 8)).astype(np.float32), "emb")
    head = numpy_helper.from_array(rng.standard_normal((8, len(LABELS))).astype(np.float32), "head")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes1")
    axes2 = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes2")
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["tok"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axes2"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axes1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axes1"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
                       helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        [emb, head, axes, axes2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    (out / "model.onnx").write_bytes(model.SerializeToString())
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(out / "tokenizer.json"))
    write_manifest(out, task="toy", task_kind="single", label_names=LABELS, max_length=16, models={"fp32": "model.onnx"})
    return out


BLOCKED_RUN = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None          # any `import torch` now raises ImportError
    sys.modules["transformers"] = None
    from deploy.cli import main
    code = main(sys.argv[1:])
    loaded = sorted(m for m in ("torch", "transformers", "toolchain", "onnx", "optimum") if sys.modules.get(m))
    print("LOADED", loaded, file=sys.stderr)
    sys.exit(code)
""")


def _blocked(*args, stdin=None, cwd=None):
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _toy_artifact(tmp_path_factory.mktemp("torch_free") / "toy")


def test_predict_without_torch(toy, tmp_path):
    result = _blocked("predict", toy, stdin="the movie was good\nthe plot was dull\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["line"] for r in rows] == [1, 2]
    assert all(r["label"] in LABELS and sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5) for r in rows)


def test_bench_and_check_without_torch(toy, tmp_path):
    result = _blocked("bench", toy, "--profile", "rpi4-4gb", "--runs", "3", "--warmup", "1", "--threads", "1",
                      "--seq-len", "16", "--out", tmp_path / "bench.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stderr
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["precision"] == "fp32" and saved["seq_len"] == 16 and saved["peak_rss_bytes"] > 0
    assert any("runs int8 but the artifact has only fp32" in w for w in saved["warnings"])
    checked = _blocked("check", toy, "--profile", "rpi4-4gb", "--runs", "3", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "LOADED []" in checked.stderr and "result: PASS" in checked.stdout


def test_real_length_bench_and_operator_profile_without_torch(toy, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("the movie was good\nthe plot was dull and the movie was bad\n\nfun\n")
    result = _blocked("bench", toy, "--profile", "rpi4-4gb", "--input", lines, "--threads", "1", "--buckets", "4,8",
                      "--out", tmp_path / "lengths.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stderr
    saved = json.loads((tmp_path / "lengths.json").read_text())
    assert saved["inputs"] == 3 and [b["upto"] for b in saved["buckets"]] == [4, 8, 16]
    ops = _blocked("ops", toy, "--runs", "3", "--seq-len", "8", cwd=tmp_path)
    assert ops.returncode == 0, ops.stderr
    assert "LOADED []" in ops.stderr and "Gather" in ops.stdout and "(between kernels)" in ops.stdout


def test_importing_deploy_loads_nothing_heavy():
    code = ("import sys, deploy, deploy.cli, deploy.measure, deploy.predict, deploy.calibrate, deploy.manifest, "
            "deploy.session, deploy.int8, deploy.lengths, deploy.opprofile\nprint(sorted(m for m in ('numpy', 'onnxruntime', 'tokenizers', 'torch', 'transformers', "
            "'yaml') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
