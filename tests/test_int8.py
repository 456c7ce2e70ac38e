"""The int8 registry and the ISA → preset rule (pure; the exports are in test_export.py)."""

from __future__ import annotations

import pytest

from deploy.errors import InputError
from deploy.int8 import INT8_VARIANTS, PRESETS, check_preset, get_variant, preset_for


@pytest.mark.parametrize("profile, preset", [("rpi4-4gb", "arm64"), ("rpi5-8gb", "arm64"), ("apple-m1", "arm64"),
                                             ("intel-n100", "avx512_vnni")])
def test_every_shipped_profile_gets_the_preset_of_its_isa(profile, preset):
    from deploy.profile import load_profile

    hw = load_profile(profile).hardware
    assert preset_for(hw.isa, hw.features) == preset
    check_preset(preset, hw.isa, hw.features)


@pytest.mark.parametrize("isa, features, preset", [
    ("x86_64", ["avx2", "fma"], "avx2"),                      # no VNNI: u8 weights, no u8×s8 saturation
    ("x86_64", ["avx2", "avx512f"], "avx512"),
    ("x86_64", ["avx2", "avx512f", "avx512_vnni"], "avx512_vnni"),
    ("x86_64", ["avx2", "avx_vnni"], "avx512_vnni"),          # AVX-VNNI (Alder Lake, Gracemont) takes s8 weights
    ("aarch64", [], "arm64"), (None, [], "avx2"), ("riscv64", [], "avx2")])
def test_preset_for_isa(isa, features, preset):
    assert preset_for(isa, features) == preset and preset in PRESETS


def test_presets_the_cpu_cannot_run_well_are_refused_with_the_fitting_one():
    with pytest.raises(InputError, match=r"int8 preset arm64 does not suit .*isa x86_64.*; use avx2"):
        check_preset("arm64", "x86_64", ["avx2"])
    with pytest.raises(InputError, match="use arm64"):
        check_preset("avx2", "arm64", ["neon"])
    with pytest.raises(InputError, match="use avx2"):
        check_preset("avx512", "x86_64", ["avx2"])
    check_preset("avx2", "x86_64", ["avx512f", "avx512_vnni"])  # slower, but correct anywhere on x86
    check_preset("avx512", "x86_64", ["avx512f", "avx512_vnni"])


def test_variants_are_named_data():
    assert get_variant("static-qdq").static and not get_variant("dynamic").per_channel
    assert all(v.summary for v in INT8_VARIANTS.values())
    with pytest.raises(InputError, match="unknown int8 variant 'qat'; choose one of: dynamic, dynamic-per-channel"):
        get_variant("qat")


def test_profile_int8_variant_is_validated(tmp_path):
    from pathlib import Path

    import yaml

    from deploy.profile import load_profile

    doc = yaml.safe_load(Path(load_profile("rpi4-4gb").path).read_text())
    doc["runtime"]["int8_variant"] = "static-qdq"
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(doc))
    assert load_profile(str(tmp_path / "ok.yaml")).runtime.int8_variant == "static-qdq"
    doc["runtime"]["int8_variant"] = "int4"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match=r"field 'runtime.int8_variant' must be one of dynamic, .*got 'int4'"):
        load_profile(str(tmp_path / "bad.yaml"))


def test_a_variant_this_onnxruntime_cannot_run_is_named_with_the_ones_it_can():
    from deploy.int8 import check_runtime, runtime_operators

    for name in INT8_VARIANTS:  # the installed onnxruntime (full build) runs every variant
        check_runtime(name)
    assert {"QAttention", "DequantizeLinear"} <= runtime_operators()
    qdq_only = {"QuantizeLinear", "DequantizeLinear", "QEmbedLayerNormalization"}  # e.g. a build without QAttention
    with pytest.raises(InputError, match=r"^this onnxruntime lacks DynamicQuantizeLinear, MatMulInteger, QAttention, "
                                         r"which int8 variant dynamic needs; variants that run here: static-qdq, static-smooth "):
        check_runtime("dynamic", qdq_only)
    with pytest.raises(InputError, match="variants that run here: none: use the fp32 model"):
        check_runtime("static-qdq", set())


def test_sessions_skip_the_slow_fusion_unless_the_profile_says_otherwise(tmp_path):
    from pathlib import Path

    import yaml

    from deploy.profile import load_profile
    from deploy.session import DISABLED_OPTIMIZERS, session_settings

    assert session_settings(None).disabled_optimizers == DISABLED_OPTIMIZERS == ("SkipLayerNormFusion",)
    assert session_settings(load_profile("rpi4-4gb").runtime).disabled_optimizers == DISABLED_OPTIMIZERS
    doc = yaml.safe_load(Path(load_profile("rpi4-4gb").path).read_text())
    doc["runtime"]["disabled_optimizers"] = []
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    settings = session_settings(load_profile(str(tmp_path / "p.yaml")).runtime)
    assert settings.disabled_optimizers == () and settings.to_dict()["disabled_optimizers"] == []


def test_unsigned_weights_follow_optimums_presets():
    """The quantisation-aware phase rounds weights as the preset stores them: one copy of that
    knowledge (deploy.int8.unsigned_weights), checked against optimum's own preset definitions."""
    from onnxruntime.quantization import QuantType
    # the toolchain's optimum: present in the main suite, absent from the device side's 3.9 venv
    AutoQuantizationConfig = pytest.importorskip(
        "optimum.onnxruntime.configuration", reason="optimum is the toolchain's, not the device's").AutoQuantizationConfig

    from deploy.int8 import PRESETS, unsigned_weights

    for preset in PRESETS:
        qconfig = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=True)
        assert unsigned_weights(preset) == (qconfig.weights_dtype == QuantType.QUInt8), preset
        assert qconfig.weights_symmetric  # fake_quant.fake_quant_weight is symmetric
