"""The device side's latency tables (torch-free; also run on Python 3.9 by tests/py39.sh):
interpolation, prediction, files, and a table measured on tiny blocks."""

from __future__ import annotations

import json

import pytest

from deploy.errors import InputError
from deploy.latency_table import (LatencyTable, calibrate_table, interpolate, interpolate_2d, predict, read_table,
                                  runtime_mismatch, table_path_for, write_table)


def _table(attn: dict, ffn: dict, fixed: dict | None = None, heads: int = 4, ffn_size: int = 37,
           seq_lens=(16, 64)) -> LatencyTable:
    return LatencyTable(hidden=32, head_size=8, max_heads=heads, max_ffn=ffn_size, precision="int8",
                        seq_lens=tuple(seq_lens), grid={"attn": tuple(attn), "ffn": tuple(ffn)},
                        ms={"attn": {s: tuple(attn.values()) for s in seq_lens},
                            "ffn": {s: tuple(ffn.values()) for s in seq_lens}},
                        fixed_ms=fixed or {}, host="test", runtime={"onnxruntime": "x", "intra_op_threads": 1})


def test_interpolation_is_exact_on_grid_points_and_monotone_between():
    xs, ys = [0, 1, 8, 32], [0.1, 0.5, 0.6, 2.0]
    for x, y in zip(xs, ys):
        assert interpolate(xs, ys, x) == y
    values = [interpolate(xs, ys, x / 4) for x in range(0, 129)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert interpolate(xs, ys, 100) == 2.0 and interpolate(xs, ys, -1) == 0.1
    assert interpolate_2d([0, 4], [16, 64], {16: [1.0, 2.0], 64: [3.0, 6.0]}, 2, 40) == pytest.approx((1.5 + 4.5) / 2)


def test_prediction_sums_fixed_cost_and_every_sub_layer():
    table = _table({0: 0.1, 2: 0.5, 4: 0.9}, {0: 0.05, 37: 0.4}, fixed={16: 1.0, 64: 2.0})
    # an empty sub-layer still costs its bias and LayerNorm (h = 0, n = 0 in the table) ...
    assert predict(table, [4, 0, 2], [37, 37, 0], 16) == pytest.approx(1.0 + 0.9 + 0.4 + 0.1 + 0.4 + 0.5 + 0.05)
    # ... but a layer with neither heads nor neurons is removed and costs nothing
    assert predict(table, [4, 0], [37, 0], 16) == pytest.approx(1.0 + 0.9 + 0.4)
    assert predict(table, [2], [37], 40) == pytest.approx(1.5 + 0.5 + 0.4)


def test_table_file_round_trip_and_bad_files(tmp_path):
    table = _table({0: 0.1, 4: 0.9}, {0: 0.05, 37: 0.4}, fixed={16: 1.0})
    path = write_table({"int8": table}, tmp_path / "host.latency.json")
    assert read_table(path)["int8"] == table
    assert table_path_for(tmp_path / "host.calibrated.yaml") == tmp_path / "host.latency.json"
    path.write_text(path.read_text()[:50])
    with pytest.raises(InputError, match="not valid JSON"):
        read_table(path)
    with pytest.raises(InputError, match="does not exist|not found"):
        read_table(tmp_path / "missing.json")
    body = json.loads(json.dumps({"schema": "sensibert.latency_table", "version": 1,
                                  "tables": {"int8": {"hidden": 32}}}))
    path.write_text(json.dumps(body))
    with pytest.raises(InputError, match="malformed latency table"):
        read_table(path)


def test_table_refuses_a_grid_without_zero_and_a_model_it_does_not_cover():
    with pytest.raises(InputError, match="must start at 0"):
        _table({1: 0.1, 4: 0.9}, {0: 0.05, 37: 0.4})
    table = _table({0: 0.1, 4: 0.9}, {0: 0.05, 20: 0.4})
    with pytest.raises(InputError, match="does not cover"):
        table.check_shape(32, 8, [4, 4], [37, 37])
    with pytest.raises(InputError, match="hidden 32, head size 8"):
        table.check_shape(64, 8, [4], [20])


def test_runtime_mismatch_names_each_setting():
    table = _table({0: 0.1, 4: 0.9}, {0: 0.05, 37: 0.4})
    assert runtime_mismatch(table, dict(table.runtime)) == []
    assert runtime_mismatch(table, {**table.runtime, "intra_op_threads": 4}) == ["intra_op_threads 1 (table) vs 4 (now)"]


def test_calibrate_table_measures_every_grid_point_at_every_length(tmp_path):
    from deploy.profile import known_profiles, load_profile

    profile = load_profile(known_profiles()["host"])
    tables = calibrate_table(profile, tmp_path / "t.latency.json", width=(32, 8, 37), seq_lens=(8, 16), runs=2,
                             progress=False)
    assert set(tables) == {"fp32", "int8"}
    for t in tables.values():
        assert t.grid["attn"] == (0, 1, 2, 3, 4) and t.grid["ffn"][0] == 0 and t.grid["ffn"][-1] == 37
        assert all(len(t.ms[k][s]) == len(t.grid[k]) and min(t.ms[k][s]) > 0 for k in ("attn", "ffn") for s in (8, 16))
        assert t.fixed_ms == {} and t.fixed(16) == 0.0 and t.runtime["intra_op_threads"] == 1
    assert read_table(tmp_path / "t.latency.json") == tables


def test_fixed_cost_and_in_graph_scale_are_fitted_on_two_artifacts():
    from deploy.latency_table import with_fixed_cost

    table = _table({0: 0.1, 2: 0.5, 4: 0.9}, {0: 0.05, 37: 0.4})
    shapes = [([4, 4], [37, 37]), ([2, 0], [0, 37])]
    isolated = {s: [predict(table, h, f, s) for h, f in shapes] for s in (16, 64)}
    measured = [({s: 2.0 + 1.5 * isolated[s][i] for s in (16, 64)}, h, f) for i, (h, f) in enumerate(shapes)]
    fitted = with_fixed_cost(table, measured, "a, b")
    assert fitted.fixed_ms == {16: 2.0, 64: 2.0} and fitted.scale == {16: 1.5, 64: 1.5}
    for ms, h, f in measured:
        assert predict(fitted, h, f, 16) == pytest.approx(ms[16], abs=1e-4)
    one = with_fixed_cost(table, measured[:1], "a")  # one artifact: scale 1, the rest is fixed
    assert one.scale == {} and one.fixed_ms[16] == pytest.approx(measured[0][0][16] - isolated[16][0], abs=1e-4)


def test_device_latency_comes_from_the_table_measured_on_the_device(tmp_path):
    """A profile whose table was measured on a host like this one: the host measurement is the
    device's ([M]). A table from another device: its prediction for the artifact's shape ([D]).
    A table without a measured fixed cost predicts the encoder only, so the probe path is kept."""
    import dataclasses

    import yaml

    from deploy.calibrate import host_description
    from deploy.measure import estimate_device_latency
    from deploy.profile import known_profiles, load_profile
    from deploy.session import session_settings

    doc = yaml.safe_load(known_profiles()["host"].read_text())
    doc["compute"]["latency_table"] = "t.latency.json"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    table = _table({0: 0.1, 2: 0.5, 4: 0.9}, {0: 0.05, 37: 0.4}, fixed={16: 1.0, 64: 2.0})
    units = {"hidden": 32, "head_size": 8, "heads": [4, 2], "ffn": [37, 0], "seq": 16.0}

    def estimate(t):
        write_table({"int8": t}, tmp_path / "t.latency.json")
        profile = load_profile(tmp_path / "p.yaml")
        return estimate_device_latency(profile, "int8", session_settings(profile.runtime), 7.5, units=units)

    here = estimate(dataclasses.replace(table, host=host_description()))
    assert (here.method, here.tag, here.latency_ms, here.scale) == ("measured", "[M]", 7.5, 1.0)
    board = estimate(dataclasses.replace(table, host="Cortex-A72 board"))
    assert (board.method, board.tag) == ("latency_table", "[D]") and "Cortex-A72 board" in board.note
    assert board.latency_ms == pytest.approx(predict(table, [4, 2], [37, 0], 16)) == pytest.approx(1.0 + 0.9 + 0.5 + 0.4 + 0.05)
    no_fixed = estimate(dataclasses.replace(table, fixed_ms={}, host="Cortex-A72 board"))
    assert no_fixed.method == "calibration"  # the host profile is probe-calibrated
    other_width = estimate(dataclasses.replace(table, hidden=64, host="Cortex-A72 board"))
    assert other_width.method == "calibration"  # a table of another model width says nothing of this one


def test_fixed_cost_and_per_kind_scales_are_recovered_from_whole_artifacts():
    """Artifacts timed as fixed + k_attn·Σattn + k_ffn·Σffn give those three numbers back per
    length (from three or more artifacts; two give one common scale)."""
    from deploy.latency_table import graph_layers, with_fixed_cost

    table = _table({0: 0.1, 2: 0.5, 4: 0.9}, {0: 0.05, 16: 0.2, 37: 0.4})
    shapes = [([4, 4], [37, 37]), ([2, 4], [37, 16]), ([4, 0], [16, 37]), ([0, 2], [0, 16])]

    def timed(heads, ffn, fixed=1.5, ka=0.8, kf=1.3):  # a removed layer (no head, no neuron) is not timed
        kept = graph_layers(heads, ffn)
        return {s: fixed + ka * sum(table.block_ms("attn", h, s) for _, h, _ in kept)
                + kf * sum(table.block_ms("ffn", f, s) for _, _, f in kept) for s in table.seq_lens}

    fitted = with_fixed_cost(table, [(timed(h, f), h, f) for h, f in shapes], "four")
    for seq in table.seq_lens:
        assert fitted.fixed(seq) == pytest.approx(1.5, abs=1e-4)
        assert fitted.scale_at(seq, "attn") == pytest.approx(0.8, abs=1e-4)
        assert fitted.scale_at(seq, "ffn") == pytest.approx(1.3, abs=1e-4)
    h, f = [3, 1], [20, 5]
    assert predict(fitted, h, f, 16) == pytest.approx(timed(h, f)[16], abs=1e-3)
    assert LatencyTable.from_dict(json.loads(json.dumps(fitted.to_dict()))) == fitted
    two = with_fixed_cost(table, [(timed(h, f), h, f) for h, f in shapes[:2]], "two")
    assert two.kind_scale == {}  # two artifacts cannot separate the kinds: one common scale
