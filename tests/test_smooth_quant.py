"""SmoothQuant-style migration for the int8 variants: the scale arithmetic, an fp32 graph that
computes the same function with evener inputs, and int8 files closer to fp32 than plain static and
plain dynamic-per-channel."""

from __future__ import annotations

import json

import numpy as np
import pytest

LOUD = 40.0

from test_export import CALIBRATION, _logit_gaps, _torch_model, small_dir  # noqa: F401  (fixture)


def test_migration_scales_meet_at_the_geometric_mean():
    from toolchain.smooth_quant import migration_scales

    act, w = np.array([100.0, 1.0, 4.0, 0.0]), np.array([1.0, 1.0, 0.25, 2.0])
    s = migration_scales(act, w, 0.5)
    live = slice(0, 3)
    np.testing.assert_allclose(act[live] / s[live], np.sqrt(act[live] * w[live]), rtol=1e-6)
    np.testing.assert_allclose(w[live] * s[live], np.sqrt(act[live] * w[live]), rtol=1e-6)
    assert s[3] == 1.0  # a silent channel is left as it is
    np.testing.assert_allclose(migration_scales(act[live], w[live], 1.0), act[live])  # α 1: all into the weight
    np.testing.assert_allclose(migration_scales(act[live], w[live], 0.0), 1 / w[live])
    with pytest.raises(ValueError):
        migration_scales(act, w, 1.5)


@pytest.fixture(scope="module")
def loud_dir(small_dir, tmp_path_factory):  # noqa: F811
    """The shrunk test model with one loud channel in every FFN input (the LayerNorm before it
    scaled up LOUD× on channel 3), as BERT's outlier channels are."""
    import shutil

    import torch

    folder = tmp_path_factory.mktemp("loud") / "model"
    shutil.copytree(small_dir, folder)
    model = _torch_model(folder)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith("attention.output.LayerNorm.weight"):
                weight[3] *= LOUD
    model.save_pretrained(folder)
    return folder


def test_smoothing_computes_the_same_function_with_evener_inputs(loud_dir, tmp_path):
    import onnx

    from toolchain.export import ExportConfig, calibration_feeds, export
    from toolchain.models import load_tokenizer
    from toolchain.parity import check_batches
    from toolchain.smooth_quant import activation_maxima, channel_spread, smooth, weighted_matmuls

    fp32 = export(loud_dir, tmp_path / "fp32", ExportConfig(seq_len=32, optimize=True, task="sst2")).path("fp32")
    tokenizer = load_tokenizer(loud_dir)
    feeds = calibration_feeds(tokenizer, CALIBRATION, 32, len(CALIBRATION))
    record = smooth(fp32, tmp_path / "smoothed.onnx", feeds)
    before, after = onnx.load(str(fp32)), onnx.load(str(tmp_path / "smoothed.onnx"))
    groups = weighted_matmuls(before)
    assert record["tensors"] == len(groups) and record["matmuls"] == sum(len(v) for v in groups.values()) > 0
    muls = [n for n in after.graph.node if n.name.startswith("sensibert_smooth_")]
    assert len(muls) == len(groups)
    readers = {n.input[0] for n in after.graph.node if n.op_type == "MatMul"}
    assert {m.output[0] for m in muls} <= readers and not set(groups) & readers  # every weighted MatMul reads a Mul
    batches = check_batches(tokenizer, 16, 64)
    np.testing.assert_allclose(_logit_gaps(tmp_path / "smoothed.onnx", batches), _logit_gaps(fp32, batches),
                               atol=1e-4)
    spread = {t: channel_spread(v) for t, v in activation_maxima(before, list(groups), feeds).items()}
    smoothed = activation_maxima(after, [m.output[0] for m in muls], feeds)
    loud = [m for m in muls if spread[m.input[0]] > 10]  # the FFN inputs after the scaled LayerNorms
    assert loud
    for mul in loud:
        assert channel_spread(smoothed[mul.output[0]]) < spread[mul.input[0]] / 2
    assert record["channel_spread_after"] < record["channel_spread_before"]


def _matmul_errors(fp32_path, int8_path, feeds) -> dict[str, float]:
    """Return each weighted MatMul's relative output error, int8 file against fp32 file (mean over feeds)."""
    import onnx

    from toolchain.smooth_quant import intermediate_values, weighted_matmuls

    fp32 = onnx.load(str(fp32_path))
    names = [n.output[0] for nodes in weighted_matmuls(fp32).values() for n in nodes]
    ref = list(intermediate_values(fp32, names, feeds))
    got = list(intermediate_values(onnx.load(str(int8_path)), names, feeds))
    return {name: float(np.mean([np.linalg.norm(g[j] - r[j]) / np.linalg.norm(r[j]) for r, g in zip(ref, got)]))
            for j, name in enumerate(names)}


def test_static_smooth_follows_fp32_closer_than_plain_static(loud_dir, tmp_path):
    """With a loud channel in the FFN inputs, the matmul it hurts most under static-qdq stays far
    nearer fp32 once smoothed, no matmul's error grows much, the mean error falls, and the
    artifact records the migration."""
    from toolchain.export import ExportConfig, calibration_feeds, export
    from toolchain.models import load_tokenizer

    feeds = calibration_feeds(load_tokenizer(loud_dir), CALIBRATION, 32, len(CALIBRATION))
    errors = {}
    for variant in ("static-qdq", "static-smooth"):
        res = export(loud_dir, tmp_path / variant, ExportConfig(seq_len=32, optimize=True, quantize="int8",
                                                                task="sst2", int8_variant=variant,
                                                                int8_preset="avx512_vnni"),
                     calibration=CALIBRATION)
        errors[variant] = _matmul_errors(res.path("fp32"), res.path("int8"), feeds)
        if variant == "static-smooth":
            assert res.int8["smoothing"]["alpha"] == 0.5 and res.int8["smoothing"]["matmuls"] == len(errors[variant])
    plain, smoothed = errors["static-qdq"], errors["static-smooth"]
    import onnx

    from toolchain.smooth_quant import activation_maxima, channel_spread, weighted_matmuls

    fp32 = onnx.load(str(res.path("fp32")))
    groups = weighted_matmuls(fp32)
    spread = {t: channel_spread(v) for t, v in activation_maxima(fp32, list(groups), feeds).items()}
    loud = [n.output[0] for t, nodes in groups.items() if spread[t] > 10 for n in nodes]  # read the loud channel
    worst = max(loud, key=plain.get)  # the matmul the loud channel hurts most without smoothing
    assert smoothed[worst] < 0.5 * plain[worst], errors
    assert all(smoothed[name] < 1.5 * plain[name] for name in plain), errors
    assert np.mean(list(smoothed.values())) < np.mean(list(plain.values()))


@pytest.fixture(scope="module")
def loud_attention_dir(loud_dir, tmp_path_factory):
    """``loud_dir`` with the loud channel also in the fused attention's input (every layer-output
    LayerNorm scaled up LOUD× on channel 3), which the dynamic variants quantise (QAttention)."""
    import shutil

    import torch

    folder = tmp_path_factory.mktemp("loud-attention") / "model"
    shutil.copytree(loud_dir, folder)
    model = _torch_model(folder)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith("output.LayerNorm.weight") and "attention" not in name:
                weight[3] *= LOUD
    model.save_pretrained(folder)
    return folder


def test_dynamic_smooth_smooths_the_fused_attention_too_and_follows_fp32_closer(loud_attention_dir, tmp_path):
    """dynamic-smooth divides the input of every node the dynamic variants quantise, the fused
    attention's included (static's smoothing leaves it: it stays fp32 there); the matmul the loud
    channel hurts most under dynamic-per-channel stays far nearer fp32, and the mean error falls.
    (The toy's logits are too flat to compare: the benchmark measures the task outputs.)"""
    import onnx

    from deploy.int8 import get_variant
    from toolchain.export import ExportConfig, calibration_feeds, export
    from toolchain.models import load_tokenizer
    from toolchain.smooth_quant import weighted_matmuls

    tokenizer = load_tokenizer(loud_attention_dir)
    feeds = calibration_feeds(tokenizer, CALIBRATION, 32, len(CALIBRATION))
    files, errors = {}, {}
    for variant in ("dynamic-per-channel", "dynamic-smooth"):
        res = export(loud_attention_dir, tmp_path / variant,
                     ExportConfig(seq_len=32, optimize=True, quantize="int8", task="sst2", int8_variant=variant,
                                  int8_preset="avx512_vnni"), calibration=CALIBRATION)
        files[variant] = res.path("int8")
        errors[variant] = _matmul_errors(res.path("fp32"), res.path("int8"), feeds)
    record = res.int8["smoothing"]
    fp32 = onnx.load(str(res.path("fp32")))
    attention = [n for n in fp32.graph.node if n.op_type == "Attention"]
    groups = weighted_matmuls(fp32, ("MatMul", "Attention"))
    assert attention and record["alpha"] == get_variant("dynamic-smooth").smooth
    assert record["ops"] == ["MatMul", "Attention"]
    assert record["matmuls"] == sum(len(v) for v in groups.values()) \
        == len(attention) + sum(len(v) for v in weighted_matmuls(fp32).values())
    int8 = onnx.load(str(files["dynamic-smooth"]))
    made = {o: n for n in int8.graph.node for o in n.output}
    for node in (n for n in int8.graph.node if n.op_type == "DynamicQuantizeLinear"):
        assert made[node.input[0]].op_type == "Mul" and made[node.input[0]].name.startswith("sensibert_smooth_")
    plain, smoothed = errors["dynamic-per-channel"], errors["dynamic-smooth"]
    worst = max(plain, key=plain.get)
    assert smoothed[worst] < 0.5 * plain[worst], errors
    assert np.mean(list(smoothed.values())) < np.mean(list(plain.values())), errors


def test_the_smooth_alpha_flag_sets_the_migration_strength(loud_dir, tmp_path, capsys):
    """``--int8-smooth-alpha`` exports a smoothed variant at that α (recorded; the inverse scales
    are the ones that α gives); a variant that smooths nothing, an α out of (0, 1] or an α without
    int8 are refused in one line before anything is written."""
    import onnx
    from onnx import numpy_helper

    from deploy.int8 import get_variant
    from toolchain.cli import main
    from toolchain.errors import InputError
    from toolchain.export import ExportConfig, export

    data = tmp_path / "calibration.txt"
    data.write_text("\n".join(CALIBRATION) + "\n")
    scales = {}
    for alpha in (None, 0.5):
        out = tmp_path / f"alpha-{alpha}"
        code = main(["export", str(loud_dir), "--out", str(out), "--optimize", "--quantize", "int8", "--task", "sst2",
                     "--seq-len", "32", "--int8-variant", "dynamic-smooth", "--calibration-data", str(data),
                     *([] if alpha is None else ["--int8-smooth-alpha", str(alpha)])])
        assert code == 0, capsys.readouterr().err
        record = json.loads((out / "export.json").read_text())["int8"]["smoothing"]
        assert record["alpha"] == (get_variant("dynamic-smooth").smooth if alpha is None else alpha)
        graph = onnx.load(str(out / "model.int8.onnx"))
        scales[alpha] = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer
                         if i.name.endswith("_smooth_inverse_scale")}
    assert scales[None].keys() == scales[0.5].keys() and scales[None]
    assert all(not np.allclose(scales[None][k], scales[0.5][k]) for k in scales[None])

    with pytest.raises(InputError, match="smooth alpha 1.5 is out of range; choose a migration strength in"):
        ExportConfig(quantize="int8", int8_smooth_alphas=(1.5,))
    with pytest.raises(InputError, match="smooth alpha.*add --quantize int8"):
        ExportConfig(int8_smooth_alphas=(0.5,))
    with pytest.raises(InputError, match="dynamic-per-channel smooths nothing; choose --int8-variant "
                                         "static-smooth or dynamic-smooth or mixed-smooth"):
        export(loud_dir, tmp_path / "plain", ExportConfig(quantize="int8", task="sst2",
                                                          int8_variant="dynamic-per-channel", int8_smooth_alphas=(0.5,)),
               calibration=CALIBRATION)
    assert not (tmp_path / "plain").exists()
    capsys.readouterr()
    code = main(["export", str(loud_dir), "--out", str(tmp_path / "cli"), "--quantize", "int8", "--task", "sst2",
                 "--int8-variant", "dynamic-smooth", "--calibration-data", str(data), "--int8-smooth-alpha", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: bad setting: int8 smooth alpha 0.0") \
        and "Traceback" not in err
    assert not (tmp_path / "cli").exists()


def test_several_smooth_alphas_ship_the_one_that_follows_fp32_best_on_held_out_inputs(loud_dir, tmp_path, capsys):
    """``--int8-smooth-alpha 0.5,0.9``: both are quantised, checked against fp32 on the calibration
    lines after the ones that calibrate (never dev), and the closest ships: its α is recorded and
    its inverse scales are the ones a one-α export at that α writes. Without held-out lines, with the
    probing variant, or with a list that does not parse: one line, nothing written."""
    import onnx
    from onnx import numpy_helper

    from toolchain import mixed_precision as mp
    from toolchain.cli import main
    from toolchain.errors import InputError
    from toolchain.export import ExportConfig, export

    held_out = [f"{a} {b}" for a in ("a fine", "a dull", "not a good", "the best") for b in ("film", "plot", "story")]
    data = tmp_path / "calibration.txt"
    data.write_text("\n".join(CALIBRATION + held_out) + "\n")

    def scales(folder):
        graph = onnx.load(str(folder / "model.int8.onnx"))
        return {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer
                if i.name.endswith("_smooth_inverse_scale")}

    flags = ["--optimize", "--quantize", "int8", "--task", "sst2", "--seq-len", "32", "--int8-variant",
             "dynamic-smooth", "--calibration-data", str(data), "--calibration-samples", str(len(CALIBRATION))]
    assert main(["export", str(loud_dir), "--out", str(tmp_path / "both"), *flags,
                 "--int8-smooth-alpha", "0.5,0.9"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "both" / "export.json").read_text())["int8"]
    check = record["alpha_check"]
    assert check["inputs"] == len(held_out) and check["alphas"] == [0.5, 0.9]
    assert set(check["scores"]) == {"0.5", "0.9"} and check["chosen"] == float(mp.closest(check["scores"]))
    assert record["smoothing"]["alpha"] == check["chosen"]
    assert f"α {check['chosen']:g} chosen of 0.5, 0.9" in out
    assert main(["export", str(loud_dir), "--out", str(tmp_path / "one"), *flags,
                 "--int8-smooth-alpha", f"{check['chosen']:g}"]) == 0
    one, both = scales(tmp_path / "one"), scales(tmp_path / "both")
    assert one and one.keys() == both.keys() and all(np.array_equal(one[k], both[k]) for k in one)
    assert "alpha_check" not in json.loads((tmp_path / "one" / "export.json").read_text())["int8"]

    with pytest.raises(InputError, match="held-out inputs beyond the 128 that calibrate.*or give one alpha"):
        export(loud_dir, tmp_path / "few", ExportConfig(quantize="int8", task="sst2", int8_variant="dynamic-smooth",
                                                        int8_smooth_alphas=(0.5, 0.9)), calibration=CALIBRATION)
    with pytest.raises(InputError, match="mixed-smooth probes one smoothed graph.*static-smooth or dynamic-smooth"):
        export(loud_dir, tmp_path / "mixed", ExportConfig(quantize="int8", task="sst2", int8_variant="mixed-smooth",
                                                          int8_smooth_alphas=(0.5, 0.9)), calibration=CALIBRATION)
    with pytest.raises(InputError, match="name one twice"):
        ExportConfig(quantize="int8", int8_smooth_alphas=(0.9, 0.9))
    assert not (tmp_path / "few").exists() and not (tmp_path / "mixed").exists()
    capsys.readouterr()
    assert main(["export", str(loud_dir), "--out", str(tmp_path / "bad"), *flags, "--int8-smooth-alpha", "0.8,x"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: bad setting: --int8-smooth-alpha '0.8,x' is not a number") \
        and "Traceback" not in err and not (tmp_path / "bad").exists()


def test_the_default_variant_chooses_its_alpha_where_held_out_inputs_are_at_hand(loud_dir, tmp_path):
    """``dynamic-smooth`` (the default with calibration inputs) tries each of its ``smooth_choices``
    when inputs beyond the calibrating ones are given; with none, it smooths at its α and says why
    it did not choose (an export note), rather than refusing."""
    from deploy.int8 import get_variant
    from toolchain.export import ExportConfig, export

    variant = get_variant("dynamic-smooth")
    assert len(variant.smooth_choices) > 1 and variant.smooth_choices[0] == variant.smooth
    held_out = [f"{a} {b}" for a in ("a fine", "a dull", "not a good") for b in ("film", "plot", "story")]
    config = ExportConfig(seq_len=32, optimize=True, quantize="int8", task="sst2", calibration_samples=len(CALIBRATION))
    chose = export(loud_dir, tmp_path / "chose", config, calibration=CALIBRATION + held_out)
    check = chose.int8["alpha_check"]
    assert chose.int8["variant"] == "dynamic-smooth" and chose.int8["chosen_by"]["variant"] == "default"
    assert check["alphas"] == list(variant.smooth_choices) and check["inputs"] == len(held_out)
    assert chose.int8["smoothing"]["alpha"] == check["chosen"] and not chose.notes
    plain = export(loud_dir, tmp_path / "plain", config, calibration=CALIBRATION)
    assert "alpha_check" not in plain.int8 and plain.int8["smoothing"]["alpha"] == variant.smooth
    assert any(f"α {variant.smooth:g} without choosing among" in n for n in plain.notes)
