"""The quantisation-aware phase: fake-quantised training brings the int8 file closer to its fp32 file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_finetune import FAST, fresh_model, sentences, tokenised  # noqa: E402  (tests/ is on sys.path)
from toolchain.errors import InputError


def _gap(artifact, batches) -> float:
    """Mean |fp32 logits - int8 logits| of an artifact's two files on the export gate's batches."""
    from deploy.session import open_session

    outs = {}
    for name in ("model.onnx", "model.int8.onnx"):
        session = open_session(artifact / name)
        names = {i.name for i in session.get_inputs()}
        outs[name] = np.concatenate([session.run(None, {k: v for k, v in b.items() if k in names})[0] for b in batches])
    return float(np.mean(np.abs(outs["model.onnx"] - outs["model.int8.onnx"])))


def test_fake_quant_matches_the_int8_rounding():
    from toolchain.fake_quant import fake_quant_input, fake_quant_weight

    x = torch.tensor([[-1.0, 0.0, 0.5, 3.0]])
    q = fake_quant_input(x)
    assert torch.allclose(q, x, atol=4.0 / 255) and float(q[0, 1]) == 0.0  # zero is exact
    w = torch.tensor([[1.0, -0.5, 0.003], [100.0, 1.0, -0.2]])
    per_channel, per_tensor = fake_quant_weight(w, True), fake_quant_weight(w, False)
    assert torch.allclose(per_channel[0], w[0], atol=1.0 / 254) and float(per_tensor[0, 2]) == 0.0
    assert float(per_channel.abs().max()) == 100.0


def test_quantisation_aware_phase_lowers_the_int8_gap(tiny_bert_dir, tmp_path):
    """The same short fine-tuning with and without fake quantisation, from one model with a loud
    activation channel: the fake-quantised one's int8 file is nearer its fp32 file."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from toolchain.costs import shape_from_config
    from toolchain.export import ExportConfig, export
    from toolchain.finetune import FinetuneConfig, finetune
    from toolchain.parity import check_batches
    from toolchain.plan import dense_plan
    from toolchain.shrink import shrink_dir

    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    train, dev = tokenised(tok, sentences(96, 11)), tokenised(tok, sentences(24, 12))
    gaps = {}
    for name, variant in (("plain", None), ("qat", "dynamic-per-channel")):
        model = fresh_model(tiny_bert_dir)
        with torch.no_grad():  # one loud channel: per-tensor activation scales lose the rest
            model.bert.embeddings.LayerNorm.weight[0] *= 30.0
        finetune(model, dense_plan(shape_from_config(model.config)), train, dev, DataCollatorWithPadding(tok),
                 FinetuneConfig(epochs=4, fake_quant=variant, **FAST), tmp_path / name)
        shrink_dir(tmp_path / name, tmp_path / f"{name}-small")
        art = export(tmp_path / f"{name}-small", tmp_path / f"{name}-onnx",
                     ExportConfig(seq_len=16, optimize=True, quantize="int8", task="sst2", int8_min_agreement=0.0,
                                  ))
        gaps[name] = _gap(art.out_dir, check_batches(tok, 16, model.config.max_position_embeddings))
    assert gaps["qat"] < 0.5 * gaps["plain"], gaps  # measured: 1.6e-4 plain, 2.8e-5 fake-quantised


@pytest.mark.parametrize("variant", ["static-qdq", "mixed", "int4"])
def test_a_variant_without_fake_quant_is_refused(variant):
    from toolchain.finetune import FinetuneConfig

    with pytest.raises(InputError, match=f"int8 variant '{variant}' has no fake-quant equivalent"):
        FinetuneConfig(fake_quant=variant)


def test_variants_chosen_after_training_are_imitated_by_per_channel():
    """mixed precision's fp32 nodes and smoothing's scales are measured on the trained model, so the
    quantisation-aware phase for them imitates dynamic-per-channel; a static variant stays refused."""
    from toolchain.fake_quant import variant_for

    for name in ("mixed", "dynamic-smooth", "mixed-smooth", "dynamic-per-channel"):
        assert variant_for(name) == "dynamic-per-channel"
    assert variant_for("dynamic") == "dynamic"
    with pytest.raises(InputError, match="int8 variant 'static-smooth' has no fake-quant equivalent"):
        variant_for("static-smooth")
