"""ONNX export: parity with PyTorch, fused graphs with per-layer head counts, int8, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_shrink import make_masked_dir, random_masks  # noqa: E402  (tests/ is on sys.path)
from toolchain.costs import encoder_params, layer_params, shape_from_config
from toolchain.errors import InputError, ParityError
from toolchain.masks import MaskSet

MASKS = random_masks(11, layers=3, no_heads=1, no_ffn=2)


@pytest.fixture(scope="module")
def small_dir(tiny_bert_dir, tmp_path_factory):
    """A shrunk 3-layer model (one layer without heads, one without neurons) with task metadata."""
    from toolchain.shrink import shrink_dir

    root = tmp_path_factory.mktemp("export")
    masked = make_masked_dir(tiny_bert_dir, root / "masked", MASKS,
                             extra={"metrics.json": {"task": "qnli", "best": {"accuracy": 0.5}}})
    shrink_dir(masked, root / "small")
    return root / "small"


@pytest.fixture(scope="module")
def plain(small_dir, tmp_path_factory):
    """fp32 export without graph fusion, nominal length 32."""
    from toolchain.export import ExportConfig, export

    return export(small_dir, tmp_path_factory.mktemp("plain") / "onnx", ExportConfig(seq_len=32))


@pytest.fixture(scope="module")
def fused(small_dir, tmp_path_factory):
    """Fused fp32 + int8 export."""
    from toolchain.export import ExportConfig, export

    return export(small_dir, tmp_path_factory.mktemp("fused") / "onnx",
                  ExportConfig(seq_len=32, optimize=True, quantize="int8", task="sst2"))


def _load(path):
    import onnx

    return onnx.load(str(path))


def _torch_model(small_dir):
    from transformers import AutoModelForSequenceClassification

    import toolchain.modeling  # noqa: F401

    return AutoModelForSequenceClassification.from_pretrained(small_dir).eval()


def test_fp32_parity_at_odd_and_nominal_length_with_padding(plain, small_dir):
    report = plain.parity["fp32"]
    shapes = {tuple(c.input_shape) for c in report.checks}
    assert shapes == {(12, 19), (12, 32)}
    assert any("left-pad" in c.name for c in report.checks)
    assert {c.name.split("/")[1] for c in report.checks} == {"ort-basic", "ort-all", "deploy"}
    assert report.passed and report.max_abs_diff <= 1e-4

    # independently: a length never checked during export, real padded text, our own session
    import onnxruntime as ort

    from toolchain.models import load_tokenizer
    from toolchain.parity import onnx_logits, sample_inputs, torch_logits

    batch = sample_inputs(load_tokenizer(small_dir), 23)
    assert (batch["attention_mask"] == 0).any()
    session = ort.InferenceSession(str(plain.path("fp32")), providers=["CPUExecutionProvider"])
    assert np.abs(onnx_logits(session, batch) - torch_logits(_torch_model(small_dir), batch)).max() <= 1e-4
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]


def test_plain_export_files_and_record(plain):
    out = plain.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "export.json", "model.onnx", "sensibert.json",
                                                     "special_tokens_map.json", "tokenizer.json",
                                                     "tokenizer_config.json", "vocab.txt"]
    assert plain.models == {"fp32": "model.onnx"} and plain.optimized is False
    record = json.loads((out / "export.json").read_text())
    assert record["schema"] == "sensibert.export" and record["parity"]["fp32"]["passed"]
    from deploy.artifacts import sha256_file

    assert record["sha256"]["model.onnx"] == sha256_file(out / "model.onnx") == plain.sha256["model.onnx"]
    assert plain.op_counts["fp32"]["Attention"] == 0 and plain.op_counts["fp32"]["LayerNormalization"] == 7


def test_task_comes_from_fine_tuning_metadata(plain):
    from deploy.manifest import read_manifest

    assert plain.task.task == "qnli" and plain.task.task_kind == "pair" and plain.task.max_length == 32
    manifest = read_manifest(plain.out_dir, verify=True)
    assert manifest.task == "qnli" and manifest.task_kind == "pair" and manifest.models == {"fp32": "model.onnx"}
    assert len(manifest.label_names) == 2 and manifest.max_length == 32
    assert plain.manifest == str(plain.out_dir / "sensibert.json")


@pytest.mark.parametrize("which", ["plain", "fused"])
def test_onnx_initializers_hold_the_planned_encoder(which, request, small_dir):
    from toolchain.inspect_artifact import analyse_onnx

    result = request.getfixturevalue(which)
    shape = shape_from_config(_torch_model(small_dir).config)
    info = analyse_onnx(_load(result.path("fp32")))
    assert info.heads == MASKS.heads and info.ffn == MASKS.ffn
    assert info.encoder_params == encoder_params(shape) == result.encoder_params_onnx
    for i, layer in enumerate(info.layers):
        expected = layer_params(shape, i)
        assert layer.attn_params == expected["attn"] + 2 * shape.hidden  # + the attention LayerNorm
        assert layer.ffn_params == expected["ffn"] + 2 * shape.hidden


def test_fused_graph_has_one_attention_per_layer_with_its_head_count(fused):
    from onnx import numpy_helper

    model = _load(fused.path("fp32"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    expected = [h for h in MASKS.heads if h > 0]
    assert len(attention) == len(expected)
    seen = []
    for node in attention:
        num_heads = next(a.i for a in node.attribute if a.name == "num_heads")
        width = inits[node.input[1]].shape[1] // 3
        assert width == num_heads * 8  # head size 8: the attribute matches the packed QKV weight
        seen.append(num_heads)
    assert sorted(seen) == sorted(expected)
    assert fused.attention_num_heads == tuple(h if h > 0 else None for h in MASKS.heads)
    counts = fused.op_counts["fp32"]
    assert counts["Attention"] == len(expected)
    assert counts["BiasGelu"] + counts["FastGelu"] == sum(1 for f in MASKS.ffn if f > 0)
    ln = counts["SkipLayerNormalization"] + counts["LayerNormalization"] + counts["EmbedLayerNormalization"]
    # residual adds stay Add + LayerNormalization: onnxruntime's SkipLayerNormalization is the slow kernel
    assert ln == 1 + 2 * len(MASKS.heads) and counts["SkipLayerNormalization"] == 0
    assert fused.parity["fp32"].passed and fused.parity["fp32"].max_abs_diff <= 1e-4


def test_int8_export_reports_agreement(fused):
    report = fused.parity["int8"]
    assert fused.models == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert 0.0 <= report.label_agreement <= 1.0 and report.label_agreement >= 0.5
    assert 0 < report.max_abs_diff < 1.0  # quantised: not bit-equal, but close
    assert all(c.tolerance is None and c.min_agreement == 0.5 for c in report.checks)
    counts = fused.op_counts["int8"]
    assert counts["QAttention"] == sum(1 for h in MASKS.heads if h > 0) and counts["Attention"] == 0
    assert counts["MatMulInteger"] == fused.op_counts["fp32"]["MatMul"]  # every weight matmul quantised
    assert fused.sizes["model.int8.onnx"] < fused.sizes["model.onnx"]
    from deploy.manifest import read_manifest

    manifest = read_manifest(fused.out_dir)
    assert manifest.models == {"fp32": "model.onnx", "int8": "model.int8.onnx"} and manifest.task == "sst2"


def test_failed_check_keeps_the_existing_folder(small_dir, tmp_path):
    from deploy.artifacts import sha256_file
    from toolchain.export import ExportConfig, export

    out = tmp_path / "onnx"
    first = export(small_dir, out, ExportConfig(seq_len=32))
    before = {p.name: sha256_file(p) for p in out.iterdir()}
    with pytest.raises(ParityError) as err:
        export(small_dir, out, ExportConfig(seq_len=32, optimize=True, fp32_atol=1e-12))
    message = str(err.value)
    assert "\n" not in message and "model.onnx (fp32)" in message and "tolerance 1e-12" in message
    assert "input 12x19" in message and "input 12x32" in message
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # no temp folder left
    assert first.parity["fp32"].passed


def test_int8_agreement_floor_fails_loudly(fused, small_dir):
    """Against references whose labels are all flipped, agreement is 0: one error names it all."""
    from toolchain.models import load_tokenizer
    from toolchain.parity import check_batches, check_onnx, raise_on_failure, torch_logits

    batches = check_batches(load_tokenizer(small_dir), 32, 64)
    model = _torch_model(small_dir)
    flipped = [{"logits": -torch_logits(model, b)} for b in batches]
    report = check_onnx(fused.path("int8"), flipped, batches, precision="int8", min_agreement=0.5)
    assert not report.passed and report.label_agreement < 0.5
    with pytest.raises(ParityError) as err:
        raise_on_failure([report], fix="the fix")
    message = str(err.value)
    assert "\n" not in message and message.count("model.int8.onnx (int8)") == len(report.checks)
    assert "minimum 50%" in message and "max abs diff" in message and message.endswith("; the fix")


def test_the_int8_gate_runs_each_input_alone(fused, small_dir):
    """The gate checks what deploy/ computes (one input per int8 call): its outputs on a batch are
    each row's own, which a whole-batch call of dynamic int8 does not give."""
    import numpy as np
    import onnxruntime as ort

    from toolchain.models import load_tokenizer
    from toolchain.parity import check_batches, check_onnx, onnx_outputs

    batch = max(check_batches(load_tokenizer(small_dir), 32, 64), key=lambda b: len(b["input_ids"]))
    session = ort.InferenceSession(str(fused.path("int8")), providers=["CPUExecutionProvider"])
    rows = onnx_outputs(session, batch, ["logits"], rows=1)["logits"]
    alone = np.concatenate([onnx_outputs(session, {k: v[i:i + 1] for k, v in batch.items()}, ["logits"])["logits"]
                            for i in range(len(batch["input_ids"]))])
    np.testing.assert_array_equal(rows, alone)
    assert not np.array_equal(onnx_outputs(session, batch, ["logits"])["logits"], alone)
    report = check_onnx(fused.path("int8"), [{"logits": alone}], [batch], precision="int8")
    assert [c.max_abs_diff for c in report.checks if "/ort-all" in c.name] == [0.0]  # the same graph level


@pytest.fixture(scope="module")
def empty_dir(tiny_bert_dir, tmp_path_factory):
    """A shrunk model with every head and neuron removed."""
    from toolchain.shrink import shrink_dir

    root = tmp_path_factory.mktemp("empty")
    masked = make_masked_dir(tiny_bert_dir, root / "masked", MaskSet.from_lists(4, 37, [[], []], [[], []]))
    shrink_dir(masked, root / "small")
    return root / "small"


def test_model_without_units_exports_fp32_but_refuses_int8(empty_dir, tmp_path):
    from toolchain.export import ExportConfig, export

    result = export(empty_dir, tmp_path / "fp32", ExportConfig(task="sst2", optimize=True))
    assert result.parity["fp32"].passed and result.encoder_params_onnx == result.encoder_params_expected
    assert result.op_counts["fp32"]["MatMul"] == 0
    with pytest.raises(InputError, match="no matmul to quantise"):
        export(empty_dir, tmp_path / "int8", ExportConfig(task="sst2", quantize="int8"))
    assert not (tmp_path / "int8").exists()


def test_quantizable_nodes_of_a_graph_without_weights(empty_dir, tmp_path):
    from toolchain.export import ExportConfig, export, quantizable_nodes

    result = export(empty_dir, tmp_path / "fp32", ExportConfig(task="sst2"))
    assert quantizable_nodes(_load(result.path("fp32"))) == []


def _bad_exports(small_dir, tiny_bert_dir, tmp_path):
    from transformers import BertModel

    from conftest import tiny_config

    encoder_only = tmp_path / "encoder_only"
    BertModel(tiny_config()).save_pretrained(encoder_only)
    import shutil

    from transformers import BertForSequenceClassification

    no_task = tmp_path / "no_task"  # a classifier that records no task (nothing of sensibert wrote it)
    BertForSequenceClassification(tiny_config(vocab_size=BertModel.from_pretrained(tiny_bert_dir).config.vocab_size)
                                  ).save_pretrained(no_task)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert_dir / name).is_file():
            shutil.copy(tiny_bert_dir / name, no_task / name)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    high = 99
    return {
        "opset-too-low": ([str(small_dir), "--opset", "9", "--task", "sst2"], "opset 9 cannot be written"),
        "opset-too-high": ([str(small_dir), "--opset", str(high), "--task", "sst2"], f"opset {high} cannot be written"),
        "no-task": ([str(no_task)], "no task recorded"),
        "not-a-classifier": ([str(encoder_only), "--task", "sst2"], "not a sequence classifier"),
        "missing-dir": ([str(tmp_path / "nope"), "--task", "sst2"], "does not exist"),
        "foreign-out": ([str(small_dir), "--task", "sst2"], "not an earlier export"),
    }, foreign


def test_bad_inputs_write_nothing(small_dir, tiny_bert_dir, tmp_path, capsys):
    from toolchain.cli import main

    cases, foreign = _bad_exports(small_dir, tiny_bert_dir, tmp_path)
    for name, (argv, match) in cases.items():
        out = foreign if name == "foreign-out" else tmp_path / f"out-{name}"
        assert main(["export", *argv, "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and match in err, (name, err)
        if name != "foreign-out":
            assert not out.exists(), name
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_opset_range_follows_the_installation():
    import onnx.defs

    from toolchain.export import check_opset, opset_range

    low, high = opset_range()
    assert low == 17 and high <= onnx.defs.onnx_opset_version()
    check_opset(low)
    with pytest.raises(InputError, match="pass --opset 17"):
        check_opset(high + 1)


def test_cli_export(small_dir, tmp_path, capsys):
    from toolchain.cli import main

    out = tmp_path / "onnx"
    assert main(["export", str(small_dir), "--out", str(out), "--optimize", "--task", "sst2", "--seq-len", "24"]) == 0
    text = capsys.readouterr().out
    assert "model.onnx" in text and "Attention 2" in text and "manifest" in text
    assert json.loads((out / "sensibert.json").read_text())["max_length"] == 24


def test_minilm_uneven_plan_shrink_and_export(minilm_dir, tmp_path):
    """The packaged MiniLM with a real uneven plan: shrink parity and fused fp32 export parity (~10 s)."""
    import random

    from toolchain.export import ExportConfig, export
    from toolchain.models import load_classifier, load_tokenizer
    from toolchain.shrink import shrink_dir

    masked = tmp_path / "masked"
    model = load_classifier(minilm_dir, num_labels=2, seed=0, id2label={0: "negative", 1: "positive"})
    model.save_pretrained(masked)
    load_tokenizer(minilm_dir).save_pretrained(masked)
    rng = random.Random(0)
    heads, ffn = [8, 12, 0, 2, 12, 5], [1536, 700, 300, 0, 1000, 61]
    MaskSet.from_lists(12, 1536, [rng.sample(range(12), h) for h in heads],
                       [rng.sample(range(1536), f) for f in ffn]).save(masked / "masks.json")
    report = shrink_dir(masked, tmp_path / "small")
    assert report.heads == tuple(heads) and report.ffn == tuple(ffn) and report.max_abs_diff <= 1e-4
    result = export(tmp_path / "small", tmp_path / "onnx", ExportConfig(optimize=True, task="sst2", seq_len=64))
    assert result.parity["fp32"].passed and result.parity["fp32"].max_abs_diff <= 1e-4
    assert result.attention_num_heads == tuple(h if h else None for h in heads)
    assert result.encoder_params_onnx == result.encoder_params_expected == report.encoder_params_after


def test_structure_checks_name_each_mismatch(fused):
    """The graph-vs-plan checks export runs before keeping a file, fed a plan the graph does not match."""
    from toolchain.export import _structure_failures
    from toolchain.inspect_artifact import analyse_onnx

    info = analyse_onnx(_load(fused.path("fp32")))
    assert _structure_failures("model.onnx", info, MASKS.heads, MASKS.ffn, fused.encoder_params_expected, True) == []
    wrong_heads = tuple(h + 1 if h else h for h in MASKS.heads)
    failures = _structure_failures("model.onnx", info, wrong_heads, MASKS.ffn, fused.encoder_params_expected + 5, True)
    assert any("graph has heads" in f for f in failures)
    assert sum("Attention num_heads" in f for f in failures) == sum(1 for h in MASKS.heads if h)
    assert any(f"costs.py expects {fused.encoder_params_expected + 5}" in f for f in failures)


def test_artifact_loads_in_optimum_and_a_pipeline_as_deploy_predicts(fused):
    """The artifact folder is a Hugging Face one: ORTModelForSequenceClassification + pipeline give
    the labels and probabilities `deploy predict` gives, on both precisions."""
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoConfig, AutoTokenizer, pipeline

    from deploy.manifest import read_manifest
    from deploy.predict import PredictConfig, predict

    folder = fused.out_dir
    manifest = read_manifest(folder)  # hashes cover config.json and the tokenizer files
    assert {"config.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"} <= set(manifest.files)
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "bert" and tuple(config.id2label.values()) == manifest.label_names
    assert config.sensibert["heads_per_layer"] == list(MASKS.heads) and config.sensibert["task"] == "sst2"
    texts = ["it was great.", "the plot was boring and the actors did not love it.", "what a brilliant film!"]
    for precision, name in fused.models.items():
        model = ORTModelForSequenceClassification.from_pretrained(folder, file_name=name)
        pipe = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(folder),
                        top_k=None)
        # batch 1 as the pipeline runs: dynamic int8 scales activations per batch tensor (padding included)
        ours = predict(folder, texts, PredictConfig(precision=precision, batch_size=1))
        for theirs, mine in zip(pipe(texts), ours):
            probs = {d["label"]: d["score"] for d in theirs}
            assert max(probs, key=probs.get) == mine.label
            for label, p in zip(manifest.label_names, mine.probabilities):
                assert probs[label] == pytest.approx(p, abs=1e-5), precision


@pytest.mark.parametrize("optimize", [True, False])
def test_int8_quantises_the_embedding_tables(small_dir, tmp_path, optimize):
    """The word, position and token-type tables ship in int8 (fused: QEmbedLayerNormalization; unfused:
    Gather from an int8 table): the file shrinks by ~3/4 of their fp32 bytes, label parity holds."""
    from toolchain.costs import embedding_table_params
    from toolchain.export import ExportConfig, export

    shape = shape_from_config(json_config(small_dir))
    both = {}
    for flag in (True, False):
        res = export(small_dir, tmp_path / f"emb-{flag}", ExportConfig(seq_len=32, optimize=optimize, quantize="int8",
                                                                      task="sst2", quantize_embeddings=flag))
        assert res.parity["int8"].passed
        both[flag] = res
    graph = _load(both[True].path("int8"))
    ops = {n.op_type for n in graph.graph.node}
    assert ("QEmbedLayerNormalization" in ops) if optimize else ("DequantizeLinear" in ops or "Gather" in ops)
    saved = both[False].sizes["model.int8.onnx"] - both[True].sizes["model.int8.onnx"]
    tables = embedding_table_params(shape)
    assert 0.6 * 3 * tables <= saved <= 3 * tables + 4096


def json_config(folder):
    from transformers import AutoConfig

    import toolchain.modeling  # noqa: F401  registers the sensibert config

    return AutoConfig.from_pretrained(folder)


CALIBRATION = ["a fine film", "the plot is thin and the acting worse", "an hour of joy", "not good", "it moved me"]


@pytest.mark.parametrize("variant", ["dynamic", "dynamic-per-channel", "static-qdq", "static-smooth", "mixed",
                                     "dynamic-smooth", "mixed-smooth"])
def test_every_int8_variant_passes_the_export_checks(small_dir, tmp_path, variant):
    """Uneven heads (one layer without any) and FFN widths: each variant keeps label agreement above
    the floor and its logits within 1.0 of PyTorch's, and the artifact records which variant it is."""
    from deploy.int8 import get_variant
    from deploy.manifest import read_manifest
    from toolchain.export import ExportConfig, export

    v = get_variant(variant)
    res = export(small_dir, tmp_path / variant,
                 ExportConfig(seq_len=32, optimize=True, quantize="int8", task="sst2", int8_variant=variant,
                              int8_preset="avx512_vnni"),
                 calibration=CALIBRATION if v.calibrated else None)
    report = res.parity["int8"]
    assert report.passed and report.label_agreement >= 0.5 and 0 < report.max_abs_diff < 1.0
    assert res.int8["variant"] == variant and res.int8["preset"] == "avx512_vnni"
    assert res.int8["calibration_samples"] == (len(CALIBRATION) if v.calibrated else 0)
    assert ("smoothing" in res.int8) == (v.smooth > 0) and ("probes" in res.int8) == v.mixed  # mixed-smooth: both
    assert read_manifest(res.out_dir).extra["int8"] == {"variant": variant, "preset": "avx512_vnni"}
    counts = res.op_counts["int8"]
    with_heads = sum(1 for h in MASKS.heads if h > 0)
    graph = _load(res.path("int8"))
    inits = {i.name: i for i in graph.graph.initializer}
    if v.static:  # QDQ around each weighted MatMul; the fused attention stays fp32
        assert counts["Attention"] == with_heads and counts["QAttention"] == 0
        dq = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"]
        assert len(dq) >= 2 * res.op_counts["fp32"]["MatMul"]  # weight and activation of each
        weight_scales = [inits[n.input[1]] for n in dq if n.input[0] in inits and len(inits[n.input[0]].dims) == 2]
    else:  # mixed: the nodes its probes kept fp32 stay Attention / MatMul
        kept = res.int8["fp32_nodes"]
        fp32_ops = {n.name: n.op_type for n in _load(res.path("fp32")).graph.node}
        kept_attention = sum(1 for n in kept if fp32_ops[n] == "Attention")
        assert counts["QAttention"] == with_heads - kept_attention and counts["Attention"] == kept_attention
        mm = [n for n in graph.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
        assert len(mm) == res.op_counts["fp32"]["MatMul"] - (len(kept) - kept_attention)
        # onnxruntime's quantiser names a weight's scale after its int8 table
        weight_scales = [inits[n.input[1].replace("_quantized", "_scale")] for n in mm]
    sizes = {int(np.prod(s.dims)) for s in weight_scales}
    assert sizes and ((sizes != {1}) if v.per_channel else (sizes == {1}))  # one scale per column, or one


def test_mixed_keeps_its_fp32_nodes_only_where_they_beat_per_channel_on_held_out_inputs(small_dir, tmp_path):
    """The probes read the first calibration inputs; the inputs after them (never probed) decide
    whether the chosen nodes ship fp32 or the graph ships as plain per-channel; the record says which."""
    from toolchain import mixed_precision as mp
    from toolchain.export import ExportConfig, export

    held_out = [f"{a} {b}" for a in ("a fine", "a dull", "not a good", "the best") for b in ("film", "plot", "story")]
    res = export(small_dir, tmp_path / "mixed",
                 ExportConfig(seq_len=32, optimize=True, quantize="int8", task="sst2", int8_variant="mixed",
                              int8_fp32_share=1.0, calibration_samples=len(CALIBRATION)),
                 calibration=CALIBRATION + held_out)
    record = res.int8
    assert record["calibration_samples"] == len(CALIBRATION) and record["probe_inputs"] == len(CALIBRATION)
    helpful = sorted(p["name"] for p in record["probes"] if p["gain"] > 0)
    assert helpful, "the toy's probes found no helpful node: the check below would not run"
    check = record["validation"]
    assert check["inputs"] == len(held_out) and check["probes_chose"] == helpful
    assert check["kept_mixed"] == (mp.closest({k: check[k] for k in ("per_channel", "mixed")}) == "mixed")
    assert record["fp32_nodes"] == (helpful if check["kept_mixed"] else [])
    # without inputs beyond the probes' there is nothing to check on: the probes' choice ships, said so
    bare = export(small_dir, tmp_path / "bare",
                  ExportConfig(seq_len=32, optimize=True, quantize="int8", task="sst2", int8_variant="mixed",
                               int8_fp32_share=1.0), calibration=CALIBRATION)
    assert bare.int8["validation"] is None and bare.int8["fp32_nodes"] == helpful


def test_int8_variant_and_preset_come_from_the_profile(small_dir, tmp_path):
    """rpi4-4gb is Arm: the arm64 preset (s8 weights); its int8_variant unset: the default variant."""
    from deploy.int8 import DEFAULT_VARIANT, UNCALIBRATED_VARIANT, get_variant
    from toolchain.export import ExportConfig, export

    res = export(small_dir, tmp_path / "rpi", ExportConfig(seq_len=32, optimize=True, quantize="int8", task="sst2",
                                                          profile="rpi4-4gb"))
    assert res.int8["preset"] == "arm64" and res.int8["variant"] == UNCALIBRATED_VARIANT
    assert res.int8["chosen_by"] == {"variant": "default", "preset": "profile rpi4-4gb (arm64)"}
    with_inputs = export(small_dir, tmp_path / "rpi-c", ExportConfig(seq_len=32, optimize=True, quantize="int8",
                                                                    task="sst2", profile="rpi4-4gb"),
                         calibration=CALIBRATION)  # calibration inputs at hand: the calibrated default
    assert with_inputs.int8["variant"] == DEFAULT_VARIANT and get_variant(DEFAULT_VARIANT).calibrated
    assert "smoothing" in with_inputs.int8 and with_inputs.int8["calibration_samples"] == len(CALIBRATION)


def test_the_profiles_int8_variant_is_the_one_that_ships(small_dir, tmp_path):
    import yaml

    from deploy.manifest import read_manifest
    from deploy.profile import load_profile
    from toolchain.export import ExportConfig, export

    doc = yaml.safe_load(open(load_profile("intel-n100").path).read())
    doc["runtime"]["int8_variant"] = "dynamic"
    (tmp_path / "n100.yaml").write_text(yaml.safe_dump(doc))
    res = export(small_dir, tmp_path / "n100", ExportConfig(seq_len=32, optimize=True, quantize="int8", task="sst2",
                                                           profile=str(tmp_path / "n100.yaml")))
    assert res.int8["variant"] == "dynamic" and res.int8["preset"] == "avx512_vnni"  # AVX-VNNI: s8 weights
    assert res.int8["chosen_by"]["variant"] == "profile intel-n100"
    assert read_manifest(res.out_dir).extra["int8"] == {"variant": "dynamic", "preset": "avx512_vnni"}
    flag = export(small_dir, tmp_path / "flag", ExportConfig(seq_len=32, optimize=True, quantize="int8", task="sst2",
                                                            profile=str(tmp_path / "n100.yaml"),
                                                            int8_variant="dynamic-per-channel"))
    assert flag.int8["variant"] == "dynamic-per-channel" and flag.int8["chosen_by"]["variant"] == "flag"


def test_int8_bad_settings_are_refused_before_any_work(small_dir, tmp_path):
    from toolchain.export import ExportConfig, export

    with pytest.raises(InputError, match="static-qdq calibrates activation ranges.*--calibration-data"):
        export(small_dir, tmp_path / "s", ExportConfig(quantize="int8", task="sst2", int8_variant="static-qdq"))
    with pytest.raises(InputError, match="unknown int8 variant 'int4'; choose one of: dynamic, "):
        ExportConfig(quantize="int8", int8_variant="int4")
    with pytest.raises(InputError, match="int8 preset avx512_vnni does not suit.*isa arm64.*use arm64"):
        export(small_dir, tmp_path / "p", ExportConfig(quantize="int8", task="sst2", int8_preset="avx512_vnni",
                                                       profile="rpi4-4gb"))
    with pytest.raises(InputError, match="calibration data: no usable input line"):
        export(small_dir, tmp_path / "c", ExportConfig(quantize="int8", task="sst2", int8_variant="static-qdq"),
               calibration=[b"\n", b"  \n"])
    assert not any((tmp_path / n).exists() for n in "spc")


def test_a_mixed_precision_plan_keeps_exactly_its_nodes_fp32(small_dir, tmp_path):
    """The nodes a plan names stay fp32 (read back from the int8 graph: same name, same fp32 op);
    every other quantisable node is quantised."""
    from toolchain.export import ExportConfig, export, quantizable_nodes

    probe = export(small_dir, tmp_path / "mixed", ExportConfig(seq_len=16, optimize=True, quantize="int8",
                                                              task="sst2", int8_variant="mixed", int8_fp32_share=1.0),
                   calibration=CALIBRATION)
    probes = probe.int8["probes"]
    candidates = quantizable_nodes(_load(probe.path("fp32")))
    assert [p["name"] for p in probes] == candidates and all(p["macs"] > 0 for p in probes)
    assert probe.int8["fp32_nodes"] == sorted(p["name"] for p in probes if p["gain"] > 0)  # share 1: every helper
    fp32_ops = {n.name: n.op_type for n in _load(probe.path("fp32")).graph.node}
    plan = (next(n for n in candidates if fp32_ops[n] == "Attention"),
            next(n for n in candidates if fp32_ops[n] == "MatMul"))
    res = export(small_dir, tmp_path / "plan", ExportConfig(seq_len=16, optimize=True, quantize="int8", task="sst2",
                                                             int8_fp32_nodes=plan))
    int8_ops = {n.name: n.op_type for n in _load(res.path("int8")).graph.node}
    assert {n: int8_ops.get(n) for n in plan} == {n: fp32_ops[n] for n in plan}
    assert not any(int8_ops.get(n) == fp32_ops[n] for n in candidates if n not in plan)
    assert res.int8["fp32_nodes"] == list(plan) and res.parity["int8"].passed


def test_mixed_precision_bad_settings_are_refused_before_any_work(small_dir, tmp_path, capsys):
    from toolchain.cli import main
    from toolchain.export import ExportConfig, export

    with pytest.raises(InputError, match="int8 fp32 nodes Attention_99 are not quantisable nodes of this graph"):
        export(small_dir, tmp_path / "n", ExportConfig(quantize="int8", task="sst2", int8_fp32_nodes=("Attention_99",)))
    with pytest.raises(InputError, match="mixed measures each matmul on task inputs.*--calibration-data"):
        export(small_dir, tmp_path / "c", ExportConfig(quantize="int8", task="sst2", int8_variant="mixed"))
    with pytest.raises(InputError, match="static-qdq is static"):
        export(small_dir, tmp_path / "s", ExportConfig(quantize="int8", task="sst2", int8_variant="static-qdq",
                                                       int8_fp32_nodes=("x",)), calibration=CALIBRATION)
    with pytest.raises(InputError, match="add --quantize int8"):
        ExportConfig(int8_fp32_nodes=("x",))
    with pytest.raises(InputError, match="fp32 share 2.0 is out of range"):
        ExportConfig(quantize="int8", int8_fp32_share=2.0)
    assert not any((tmp_path / n).exists() for n in "ncs")
    code = main(["export", str(small_dir), "--out", str(tmp_path / "cli"), "--quantize", "int8",
                 "--int8-fp32-nodes", "nope", "--task", "sst2"])
    err = capsys.readouterr().err
    # node names are known once the fp32 graph exists: refused after it, before anything is written
    assert code == 2 and "\nerror: the int8 fp32 nodes nope" in "\n" + err.split("\r")[-1] and "Traceback" not in err
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize("optimize, quantize, steps", [
    (False, None, ["export", "fp32 parity", "write"]),
    (True, "int8", ["export", "fuse", "fp32 parity", "quantise", "int8 parity", "write"]),
], ids=["plain", "fused-int8"])
def test_export_shows_one_bar_over_its_steps(small_dir, tmp_path, capsys, optimize, quantize, steps):
    """The console's bar for the export stage names each step as it starts, counts all of them, and
    is cleared at the end (the stage's own lines stay ours)."""
    import re

    from toolchain.export import ExportConfig, export

    export(small_dir, tmp_path / "art", ExportConfig(optimize=optimize, quantize=quantize, task="sst2"),
           progress=True)
    err = capsys.readouterr().err
    # the rate reads "step/s" or, on a slow machine, "s/step"
    shown = [m.group(1).strip() for m in re.finditer(r"step(?:/s)?, ([^\]]+)\]", err)]
    assert list(dict.fromkeys(shown)) == steps, err
    assert f"0/{len(steps)}" in err and err.endswith("\r"), err     # one bar, cleared when done


def _logit_gaps(path, batches) -> np.ndarray:
    """Return logit[1] - logit[0] of an ONNX model on the gate's check batches."""
    from deploy.session import open_session

    session = open_session(path)
    names = {i.name for i in session.get_inputs()}
    return np.concatenate([np.diff(session.run(None, {k: v for k, v in b.items() if k in names})[0], axis=1)[:, 0]
                           for b in batches])


def test_run_falls_back_to_the_next_int8_variant_then_to_fp32(small_dir, tmp_path, capsys):
    """A model made to sit on the decision boundary: its classifier bias is set halfway between
    the fp32 and the int8 logit gap of one check input (where both int8 variants err the same
    way), so that input's label flips under every dynamic int8 variant and each fails a gate
    that asks for full agreement.
    The run's export then ships fp32 and records each refusal with its reason; ``sensibert
    export`` keeps refusing (exit 2, nothing written)."""
    import shutil

    import torch

    from toolchain.cli import main
    from toolchain.export import ExportConfig, export
    from toolchain.models import load_tokenizer
    from toolchain.parity import check_batches
    from toolchain.pipeline.deliver import export_with_fallback, int8_candidates
    from toolchain.pipeline.records import Delivered
    from toolchain.report import int8_not_shipped

    candidates = int8_candidates("dynamic-per-channel")
    assert candidates == ["dynamic-per-channel", "dynamic"]  # the others need calibration inputs
    assert int8_candidates("dynamic", calibrated=True) == ["dynamic", "dynamic-per-channel", "mixed", "dynamic-smooth",
                                                           "mixed-smooth"]  # static: only when chosen
    tie = tmp_path / "boundary"
    shutil.copytree(small_dir, tie)
    model = _torch_model(tie)
    with torch.no_grad():  # one loud activation channel: more int8 error to work with
        model.bert.embeddings.LayerNorm.weight[0] *= 50.0
    model.save_pretrained(tie)
    batches = check_batches(load_tokenizer(tie), 16, model.config.max_position_embeddings)
    gaps = {}
    for variant in candidates:
        probe = export(tie, tmp_path / f"probe-{variant}", ExportConfig(seq_len=16, optimize=True, quantize="int8",
                                                                         task="sst2", int8_variant=variant))
        gaps["fp32"] = _logit_gaps(probe.path("fp32"), batches)
        gaps[variant] = _logit_gaps(probe.path("int8"), batches)
    errors = np.stack([gaps[v] - gaps["fp32"] for v in candidates])
    same_way = np.all(errors > 0, axis=0) | np.all(errors < 0, axis=0)
    i = int(np.argmax(np.where(same_way, np.abs(errors).min(axis=0), 0.0)))
    assert same_way[i] and np.abs(errors[:, i]).min() > 1e-4
    nearest = errors[np.argmin(np.abs(errors[:, i])), i]
    with torch.no_grad():  # the boundary halfway between input i's fp32 gap and its nearest int8 gap
        model.classifier.bias[1] -= float(gaps["fp32"][i] + nearest / 2)
    model.save_pretrained(tie)

    config = ExportConfig(seq_len=16, optimize=True, quantize="int8", task="sst2", int8_min_agreement=1.0)
    result, refused = export_with_fallback(tie, tmp_path / "artifact", config, candidates)
    assert [r["variant"] for r in refused] == candidates and all("label agreement" in r["why"] for r in refused)
    assert set(result.models) == {"fp32"} and result.parity["fp32"].passed
    out = capsys.readouterr().out
    assert "int8 dynamic-per-channel refused by its gate; trying dynamic" in out and "shipping fp32" in out
    delivered = Delivered(export={"models": dict(result.models), "int8_refused": refused}, onnx_accuracy={},
                          onnx_scores={}, data=None, bench={})
    assert delivered.shipped == "fp32" and delivered.int8_refused == refused
    line = int8_not_shipped(refused)
    assert line.startswith("int8 was NOT shipped") and "Try:" in line and "dynamic-per-channel, dynamic" in line
    # sensibert export alone refuses that file, as before
    assert main(["export", str(tie), "--out", str(tmp_path / "cli"), "--optimize", "--quantize", "int8",
                 "--task", "sst2", "--seq-len", "16", "--min-int8-agreement", "1"]) == 2
    assert "label agreement" in capsys.readouterr().err and not (tmp_path / "cli").exists()
    # a model that passes ships int8 with the first variant, nothing refused
    result, refused = export_with_fallback(small_dir, tmp_path / "ok", config, candidates)
    assert refused == [] and "int8" in result.models


REMOVED = MaskSet.from_lists(4, 37, [[0, 2], [], [1, 3]], [[0, 5, 9], [], [2, 4, 30]])  # layer 1: nothing left


def test_a_layer_with_no_heads_and_no_neurons_is_absent_from_the_graph(tiny_bert_dir, tmp_path):
    """Step 11: an emptied layer is the identity in the masked model, gone from the shrunk model,
    and absent from both ONNX graphs, whose logits still match the masked model's."""
    import onnxruntime as ort

    from test_shrink import _batches
    from toolchain.export import ExportConfig, export
    from toolchain.finetune import load_masked
    from toolchain.inspect_artifact import analyse_onnx
    from toolchain.parity import torch_logits
    from toolchain.shrink import shrink_dir

    masked_dir = make_masked_dir(tiny_bert_dir, tmp_path / "masked", REMOVED,
                                 extra={"metrics.json": {"task": "sst2", "best": {"accuracy": 0.5}}})
    shrink_dir(masked_dir, tmp_path / "small")
    small = _torch_model(tmp_path / "small")
    assert not [k for k in small.state_dict() if k.startswith("bert.encoder.layer.1.")]
    assert [k for k in small.state_dict() if k.startswith("bert.encoder.layer.2.")]
    result = export(tmp_path / "small", tmp_path / "onnx",
                    ExportConfig(seq_len=32, optimize=True, quantize="int8", task="sst2"))
    masked, _ = load_masked(masked_dir)
    batches = _batches(tiny_bert_dir)
    for precision in ("fp32", "int8"):
        model = _load(result.path(precision))
        names = [n.name for n in model.graph.node] + [i.name for i in model.graph.initializer] \
            + [o for n in model.graph.node for o in n.output]
        assert not [n for n in names if "layer.1." in n or "layer.1/" in n], precision
        assert [n for n in names if "layer.2." in n or "layer.2/" in n], precision  # names keep the layer's index
        norms = [n for n in model.graph.node if "LayerNorm" in n.op_type]
        assert len(norms) == 1 + 2 * 2  # the embeddings' and two per layer left
        info = analyse_onnx(model)
        assert info.heads == (2, 2) and info.ffn == (3, 3)
        assert sum(n.op_type in ("Attention", "QAttention") for n in model.graph.node) == 2  # one per layer left
    assert list(result.attention_num_heads) == [2, 2]
    session = ort.InferenceSession(str(result.path("fp32")), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    for batch in batches:
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in batch.items() if k in wanted}
        got = session.run(None, feeds)[0]
        assert np.abs(got - np.asarray(torch_logits(masked, batch))).max() < 1e-4
