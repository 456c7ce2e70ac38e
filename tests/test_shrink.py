"""Physical removal: shrunk logits equal the masked model's, the result reloads, costs agree.

``make_masked_dir`` and ``random_masks`` are also used by test_export.py and test_inspect.py.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from toolchain.costs import shape_from_config, total_params
from toolchain.errors import InputError
from toolchain.masks import MaskSet, attach_masks

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def random_masks(seed: int, layers: int = 3, num_heads: int = 4, ffn_size: int = 37,
                 no_heads: int | None = None, no_ffn: int | None = None) -> MaskSet:
    """Return a seeded random MaskSet; ``no_heads`` / ``no_ffn`` name a layer that keeps nothing."""
    rng = random.Random(seed)
    heads = [sorted(rng.sample(range(num_heads), rng.randint(1, num_heads))) for _ in range(layers)]
    ffn = [sorted(rng.sample(range(ffn_size), rng.randint(1, ffn_size))) for _ in range(layers)]
    if no_heads is not None:
        heads[no_heads] = []
    if no_ffn is not None:
        ffn[no_ffn] = []
    return MaskSet.from_lists(num_heads, ffn_size, heads, ffn)


def perturbed_bert(layers: int, vocab_size: int, seed: int = 0):
    """Return a seeded tiny BertForSequenceClassification with non-zero biases (random init zeroes them)."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_config(num_hidden_layers=layers, vocab_size=vocab_size))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def vocab_size(tokenizer_dir: Path) -> int:
    return len([v for v in (tokenizer_dir / "vocab.txt").read_text().split("\n") if v])


def make_masked_dir(tokenizer_dir: Path, out: Path, masks: MaskSet | None, seed: int = 0,
                    extra: dict | None = None) -> Path:
    """Write a masked-model directory like sensibert finetune's: checkpoint, tokenizer, masks.json."""
    layers = len(masks.kept_heads) if masks is not None else 2
    model = perturbed_bert(layers, vocab_size(tokenizer_dir), seed)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out / name)
    if masks is not None:
        masks.save(out / "masks.json")
    for name, body in (extra or {}).items():
        (out / name).write_text(json.dumps(body))
    return out


def make_shrunk_dir(tokenizer_dir: Path, root: Path, seed: int, layers: int = 2, task: str = "sst2") -> Path:
    """Return ``root``/small: a seeded random masked model (``root``/masked) shrunk, with a task recorded."""
    from toolchain.shrink import shrink_dir

    masked = make_masked_dir(tokenizer_dir, root / "masked", random_masks(seed, layers=layers),
                             extra={"metrics.json": {"task": task, "best": {"accuracy": 0.5}}})
    shrink_dir(masked, root / "small")
    return root / "small"


def _masked(masks: MaskSet, vocab: int = 99):
    model = perturbed_bert(len(masks.kept_heads), vocab)
    attach_masks(model, masks)
    return model


def _batches(tiny_bert_dir):
    from toolchain.models import load_tokenizer
    from toolchain.parity import check_batches

    return check_batches(load_tokenizer(tiny_bert_dir), 32, 64)


MASK_CASES = {
    "seed0-no-heads-l0-no-ffn-l2": random_masks(0, no_heads=0, no_ffn=2),
    "seed1-no-heads-l1-no-ffn-l1": random_masks(1, no_heads=1, no_ffn=1),
    "seed2-no-heads-l2-no-ffn-l0": random_masks(2, no_heads=2, no_ffn=0),
    "seed3-random": random_masks(3),
    "everything-removed": MaskSet.from_lists(4, 37, [[], [], []], [[], [], []]),
    "dense": MaskSet.dense(3, 4, 37),
}


@pytest.mark.parametrize("masks", MASK_CASES.values(), ids=MASK_CASES.keys())
def test_shrunk_logits_equal_masked_with_padding(masks, tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    import toolchain.modeling  # noqa: F401
    from toolchain.parity import check_torch, torch_logits
    from toolchain.shrink import shrink

    masked = _masked(masks, vocab_size(tiny_bert_dir))
    small = shrink(masked, masks)
    batches = _batches(tiny_bert_dir)
    assert any((b["attention_mask"] == 0).any() for b in batches)  # padding is exercised
    report = check_torch(masked, small, batches, artifact="shrunk", atol=1e-5)
    assert report.passed, report.failures()
    # the mask hooks matter: without them the dense model differs (so the check above is not vacuous)
    if masks != MaskSet.dense(3, 4, 37):
        dense = perturbed_bert(3, vocab_size(tiny_bert_dir))
        assert abs(torch_logits(dense, batches[0]) - torch_logits(small, batches[0])).max() > 1e-3

    shape = shape_from_config(small.config)
    assert shape.heads == masks.heads and shape.ffn == masks.ffn
    assert total_params(shape) == sum(p.numel() for p in small.parameters())

    small.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    for b in batches:
        assert (torch_logits(again, b) == torch_logits(small, b)).all()


def test_shrink_keeps_the_right_units():
    from toolchain.shrink import shrink

    masks = MaskSet.from_lists(4, 37, [[1, 3], [0]], [[2, 36], [5]])
    masked = _masked(masks)
    small = shrink(masked, masks)
    src, dst = masked.bert.encoder.layer[0], small.bert.encoder.layer[0]
    rows = list(range(8, 16)) + list(range(24, 32))
    assert torch.equal(dst.attention.self.key.weight, src.attention.self.key.weight[rows])
    assert torch.equal(dst.attention.output.dense.weight, src.attention.output.dense.weight[:, rows])
    assert torch.equal(dst.intermediate.dense.bias, src.intermediate.dense.bias[[2, 36]])
    assert torch.equal(dst.output.dense.weight, src.output.dense.weight[:, [2, 36]])
    assert torch.equal(dst.output.dense.bias, src.output.dense.bias)


def test_shrink_refuses_masks_of_another_shape():
    from toolchain.shrink import shrink

    with pytest.raises(InputError, match="masks have 2 layers but the model has 3"):
        shrink(perturbed_bert(3, 99), random_masks(0, layers=2))
    with pytest.raises(InputError, match="masks index 6 heads"):
        shrink(perturbed_bert(2, 99), MaskSet.dense(2, 6, 37))


def test_shrink_dir_writes_a_checked_checkpoint(tiny_bert_dir, tmp_path):
    from toolchain.models import load_classifier
    from toolchain.parity import torch_logits
    from toolchain.shrink import shrink_dir

    masks = random_masks(4, no_heads=1, no_ffn=0)
    plan = {"schema": "sensibert.plan", "version": 1, "heads": list(masks.heads)}
    src = make_masked_dir(tiny_bert_dir, tmp_path / "masked", masks, extra={"plan.json": plan})
    report = shrink_dir(src, tmp_path / "small")
    out = tmp_path / "small"
    assert {"config.json", "model.safetensors", "tokenizer.json", "masks.json", "plan.json", "shrink.json"} \
        <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert MaskSet.load(out / "masks.json") == masks
    assert json.loads((out / "plan.json").read_text()) == plan
    record = json.loads((out / "shrink.json").read_text())
    assert record["schema"] == "sensibert.shrink" and record["heads"] == list(masks.heads)
    assert record["parity"]["passed"] and report.max_abs_diff <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "sensibert" and config["heads_per_layer"] == list(masks.heads)
    small = load_classifier(out, num_labels=2)  # the project's loader finds the new type too
    assert sum(p.numel() for p in small.parameters()) == report.params_after < report.params_before
    from toolchain.finetune import load_masked

    masked, _ = load_masked(src)
    batch = _batches(tiny_bert_dir)[-1]
    assert abs(torch_logits(masked, batch) - torch_logits(small, batch)).max() <= 1e-5


def test_shrink_dir_replaces_its_own_earlier_output(tiny_bert_dir, tmp_path):
    from toolchain.shrink import shrink_dir

    src = make_masked_dir(tiny_bert_dir, tmp_path / "masked", random_masks(5))
    shrink_dir(src, tmp_path / "small")
    other = make_masked_dir(tiny_bert_dir, tmp_path / "masked2", random_masks(6, no_heads=0))
    shrink_dir(other, tmp_path / "small")
    assert MaskSet.load(tmp_path / "small" / "masks.json") == random_masks(6, no_heads=0)


def _bad_dirs(tiny_bert_dir, tmp_path):
    no_masks = make_masked_dir(tiny_bert_dir, tmp_path / "no_masks", None)
    not_checkpoint = tmp_path / "not_checkpoint"
    not_checkpoint.mkdir()
    random_masks(0).save(not_checkpoint / "masks.json")
    wrong_masks = make_masked_dir(tiny_bert_dir, tmp_path / "wrong_masks", random_masks(0, layers=3))
    random_masks(0, layers=5).save(wrong_masks / "masks.json")
    bad_json = make_masked_dir(tiny_bert_dir, tmp_path / "bad_json", random_masks(0))
    (bad_json / "masks.json").write_text("{not json")
    return {
        "no-masks": (no_masks, "not a masked model \\(no masks.json\\)"),
        "not-a-checkpoint": (not_checkpoint, "no config.json"),
        "masks-for-another-model": (wrong_masks, "masks have 5 layers but the model has 3"),
        "broken-masks-json": (bad_json, "not valid JSON"),
        "missing": (tmp_path / "missing", "not a directory"),
    }


def test_shrink_dir_bad_inputs_write_nothing(tiny_bert_dir, tmp_path):
    from toolchain.shrink import shrink_dir

    for name, (src, match) in _bad_dirs(tiny_bert_dir, tmp_path).items():
        out = tmp_path / f"out-{name}"
        with pytest.raises(InputError, match=match):
            shrink_dir(src, out)
        assert not out.exists(), name
    good = make_masked_dir(tiny_bert_dir, tmp_path / "good", random_masks(0))
    with pytest.raises(InputError, match="is the masked-model directory itself"):
        shrink_dir(good, good)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an earlier shrink output"):
        shrink_dir(good, foreign)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    shrunk = tmp_path / "shrunk"
    shrink_dir(good, shrunk)
    assert (shrunk / "masks.json").is_file()  # looks like a masked dir, but is trimmed already
    with pytest.raises(InputError, match="already trimmed"):
        shrink_dir(shrunk, tmp_path / "again")


def test_cli_shrink(tiny_bert_dir, tmp_path, capsys):
    from toolchain.cli import main

    src = make_masked_dir(tiny_bert_dir, tmp_path / "masked", random_masks(7, no_ffn=1))
    assert main(["shrink", str(src), "--out", str(tmp_path / "small"), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["heads"] == list(random_masks(7, no_ffn=1).heads) and body["max_abs_diff"] <= 1e-4
    assert json.loads((tmp_path / "small" / "config.json").read_text())["ffn_per_layer"][1] == 0

    for name, (bad, _) in _bad_dirs(tiny_bert_dir, tmp_path / "bad").items():
        out = tmp_path / f"cli-{name}"
        assert main(["shrink", str(bad), "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert not out.exists()
