"""inspect: per-layer shapes and costs read back from checkpoints and from ONNX graphs."""

from __future__ import annotations

import json

import pytest

from test_shrink import make_masked_dir, random_masks  # noqa: E402  (tests/ is on sys.path)
from toolchain.costs import layer_flops, layer_params, shape_from_config, total_params
from toolchain.errors import InputError

MASKS = random_masks(21, layers=3, no_heads=2, no_ffn=0)


@pytest.fixture(scope="module")
def artifacts(tiny_bert_dir, tmp_path_factory):
    """masked dir, shrunk dir, plain fp32 + int8 export, fused fp32 + int8 export."""
    from toolchain.export import ExportConfig, export
    from toolchain.shrink import shrink_dir

    root = tmp_path_factory.mktemp("inspect")
    masked = make_masked_dir(tiny_bert_dir, root / "masked", MASKS)
    shrink_dir(masked, root / "small")
    export(root / "small", root / "plain", ExportConfig(task="sst2", seq_len=32, quantize="int8"))
    export(root / "small", root / "fused", ExportConfig(task="sst2", seq_len=32, optimize=True, quantize="int8"))
    return root


def _expected(small_dir):
    from transformers import AutoConfig

    import toolchain.modeling  # noqa: F401

    return shape_from_config(AutoConfig.from_pretrained(small_dir))


def test_checkpoint_report(artifacts):
    from toolchain.inspect_artifact import inspect

    shape = _expected(artifacts / "small")
    report = inspect(artifacts / "small", seq_len=40)
    assert report.kind == "checkpoint" and report.model_type == "sensibert"
    assert tuple(l.heads for l in report.layers) == MASKS.heads
    assert tuple(l.ffn for l in report.layers) == MASKS.ffn
    for i, layer in enumerate(report.layers):
        assert layer.params == sum(layer_params(shape, i).values())
        assert layer.flops == layer_flops(shape, i, 1, 40)
    assert report.total_params == total_params(shape)
    assert report.file_size_bytes == (artifacts / "small" / "model.safetensors").stat().st_size


def test_masked_dir_shows_the_kept_units(artifacts):
    from toolchain.inspect_artifact import inspect

    report = inspect(artifacts / "masked")
    assert report.model_type == "bert"
    assert tuple(l.heads for l in report.layers) == MASKS.heads
    assert any("masked model" in n for n in report.notes)
    assert report.total_params == inspect(artifacts / "small").total_params


@pytest.mark.parametrize("rel, precision, fused", [
    ("plain/model.onnx", "fp32", False),
    ("plain/model.int8.onnx", "int8", False),
    ("fused/model.onnx", "fp32", True),
    ("fused/model.int8.onnx", "int8", True),
])
def test_onnx_report_reads_the_graph(artifacts, rel, precision, fused):
    from toolchain.inspect_artifact import inspect

    shape = _expected(artifacts / "small")
    report = inspect(artifacts / rel, seq_len=32)
    assert report.kind == "onnx" and report.precision == precision and not report.notes
    assert tuple(l.heads for l in report.layers) == MASKS.heads
    assert tuple(l.ffn for l in report.layers) == MASKS.ffn
    for i, layer in enumerate(report.layers):
        assert layer.params == sum(layer_params(shape, i).values())
        if precision == "fp32":  # float initializers per layer = costs' layer count (the 0-head layer too)
            assert layer.onnx_params == layer.params
        if fused and MASKS.heads[i]:
            assert layer.attention_num_heads == MASKS.heads[i]
        else:
            assert layer.attention_num_heads is None
    assert report.file_size_bytes == (artifacts / rel).stat().st_size
    attention = report.op_counts.get("QAttention" if precision == "int8" else "Attention", 0)
    assert attention == (sum(1 for h in MASKS.heads if h) if fused else 0)


def test_graph_reading_does_not_trust_the_metadata(artifacts, tmp_path):
    """A stamp that disagrees with the graph is reported; the table shows the graph's shapes."""
    import onnx

    from toolchain.inspect_artifact import inspect, read_metadata, stamp_metadata

    model = onnx.load(str(artifacts / "fused" / "model.onnx"))
    meta = read_metadata(model)
    stamp_metadata(model, {**{k: v for k, v in meta.items() if k not in ("schema", "version")},
                           "heads": [4, 4, 4]})
    path = tmp_path / "lying.onnx"
    onnx.save(model, str(path))
    report = inspect(path)
    assert tuple(l.heads for l in report.layers) == MASKS.heads
    assert any("differ from the metadata" in n for n in report.notes)


def test_table_and_json_cli(artifacts, capsys):
    from toolchain.cli import main

    assert main(["inspect", str(artifacts / "fused" / "model.onnx"), "--seq-len", "19"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "attn num_heads" in lines[1] and len([l for l in lines if l.strip()[:1].isdigit()]) == 3
    assert "Attention 2" in text or "Attention 1" in text
    assert main(["inspect", str(artifacts / "small"), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [l["heads"] for l in body["layers"]] == list(MASKS.heads) and body["kind"] == "checkpoint"


def _foreign_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_bad_inputs(artifacts, tmp_path, capsys):
    import onnx

    from toolchain.cli import main
    from toolchain.inspect_artifact import inspect, stamp_metadata

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx file at all\xff" * 10)
    foreign = _foreign_onnx(tmp_path / "foreign.onnx")
    stamped = onnx.load(str(foreign))
    stamp_metadata(stamped, {"heads": [1]})
    onnx.save(stamped, str(tmp_path / "stamped.onnx"))
    cases = {
        garbage: "not a readable ONNX model",
        foreign: "not a sensibert ONNX model",
        tmp_path / "stamped.onnx": "not a BERT classifier graph",
        tmp_path / "missing.onnx": "no such file or directory",
        tmp_path: "no config.json",
        artifacts / "fused": "is an exported artifact folder",
    }
    for path, match in cases.items():
        with pytest.raises(InputError, match=match):
            inspect(path)
        assert main(["inspect", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    with pytest.raises(InputError, match="seq_len must be a positive"):
        inspect(artifacts / "small", seq_len=0)
