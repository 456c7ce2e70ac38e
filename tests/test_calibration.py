"""Which inputs calibrate an int8 file: the registered selections, and the export that uses them."""

from __future__ import annotations

import pytest

from test_export import small_dir  # noqa: F401  (fixture)
from toolchain.errors import InputError


def test_length_spread_covers_every_length_in_pool_order():
    from toolchain.calibration import first, length_spread, pool_size, select

    lengths = [9, 3, 30, 5, 12, 7, 21, 4, 16, 2]
    picked = length_spread(lengths, 4)
    assert len(picked) == 4 and picked == sorted(picked)
    assert lengths.index(2) in picked and lengths.index(30) in picked  # the shortest and the longest
    assert length_spread(lengths, 20) == list(range(10)) and first(lengths, 3) == [0, 1, 2]
    assert pool_size("first", 128) == 128 and pool_size("length-spread", 128) == 1024
    with pytest.raises(InputError, match="length-spread"):
        select("longest", lengths, 3)


def test_export_calibrates_on_the_selection_and_records_it(small_dir, tmp_path):  # noqa: F811
    """The inputs come shortest first: ``first`` calibrates on the three shortest, ``length-spread``
    reaches the longest; the artifact records the selection and the token lengths it covered."""
    from toolchain.export import ExportConfig, export

    words = "the movie was good and the plot was not bad but the actors were very dull".split()
    texts = [" ".join(words[:k]) for k in range(1, len(words) + 1)]
    tokens = {}
    for selection in ("first", "length-spread"):
        res = export(small_dir, tmp_path / selection,
                     ExportConfig(seq_len=32, optimize=True, quantize="int8", task="sst2", int8_variant="static-qdq",
                                  calibration_samples=3, calibration_selection=selection),
                     calibration=texts)
        assert res.int8["calibration_selection"] == selection and res.int8["calibration_samples"] == 3
        tokens[selection] = res.int8["calibration_tokens"]
    from toolchain.models import load_tokenizer

    length = [len(ids) for ids in load_tokenizer(small_dir)(texts)["input_ids"]]
    assert tokens["first"] == [length[0], length[2]]
    assert tokens["length-spread"] == [length[0], length[-1]] and length[-1] > length[2]
    with pytest.raises(InputError, match="unknown calibration selection 'longest'"):
        ExportConfig(quantize="int8", calibration_selection="longest")
