"""Device profiles: every shipped file loads and round-trips; every bad input fails on one line
naming the file and the field; MCU profiles come out infeasible from the budget arithmetic."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from deploy.profile import (PRECISIONS, SOURCE_TAGS, STATUSES, known_profiles, load_profile,
                            profile_from_dict)
from toolchain.errors import InputError

NAMED = ("rpi4-4gb", "rpi5-8gb", "jetson-nano-4gb", "jetson-orin-nano-8gb", "coral-devboard",
         "imx8mp-a53", "snapdragon-8gen2", "apple-m1", "intel-n100", "aws-t4g-small")
MCUS = ("esp32-s3", "stm32h743")
SHIPPED = sorted(known_profiles())


def minilm_l6_shape():
    """Return the shape of all-MiniLM-L6-v2 with a 2-class head (no model download needed)."""
    from toolchain.costs import EncoderShape

    return EncoderShape(hidden=384, head_size=32, heads=(12,) * 6, ffn=(1536,) * 6, vocab_size=30522,
                        max_positions=512, type_vocab_size=2, num_labels=2)


# ---------------------------------------------------------------- shipped profiles

def test_shipped_set_is_complete():
    assert len(SHIPPED) >= 11
    assert set(NAMED) <= set(SHIPPED), f"missing: {set(NAMED) - set(SHIPPED)}"
    assert set(MCUS) <= set(SHIPPED)
    statuses = {load_profile(n).status for n in SHIPPED}
    assert "infeasible" in statuses and "supported" in statuses


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_and_round_trips(name):
    profile = load_profile(name)
    assert profile.id == name, "the file name must equal the profile id (the CLI looks profiles up by it)"
    assert profile.status in STATUSES and profile.runtime.precision in PRECISIONS
    assert 0 < profile.model_memory_bytes <= profile.hardware.ram_bytes
    assert profile.hardware.ram_available_bytes <= profile.hardware.ram_bytes
    assert all(src.startswith(SOURCE_TAGS) for src in profile.sources.values())
    text = yaml.safe_dump(profile.to_dict(), sort_keys=False)
    again = profile_from_dict(yaml.safe_load(text), profile.path)
    assert again == profile


@pytest.mark.parametrize("name", SHIPPED)
def test_status_agrees_with_budget_arithmetic(name):
    """A profile marked infeasible must be infeasible for MiniLM-L6 at both precisions, and a
    supported one must fit it at its own precision: the status is not a hand-written label."""
    from toolchain.budget import derive_budget

    profile = load_profile(name)
    shape = minilm_l6_shape()
    if profile.status == "infeasible":
        for precision in PRECISIONS:
            budget = derive_budget(profile, shape, precision=precision)
            assert not budget.feasible and budget.binding == "memory"
            # the untrimmed parts (embeddings) alone exceed the weight memory even at 1 byte each
            assert budget.max_weight_bytes < budget.fixed_params
    else:
        assert derive_budget(profile, shape).feasible


def test_aliases_are_unique_and_resolve():
    seen = {}
    for name in SHIPPED:
        for alias in load_profile(name).aliases:
            assert alias not in seen and alias not in SHIPPED, f"alias {alias!r} is ambiguous"
            seen[alias] = name
            assert load_profile(alias) == load_profile(name)
    assert {"rpi4", "rpi5"} <= set(seen)


def test_mcu_profiles_are_infeasible():
    for name in MCUS:
        profile = load_profile(name)
        assert profile.status == "infeasible" and profile.device_class == "mcu"
        assert profile.hardware.ram_bytes < 16 * 2**20


def test_dotprod_cores_gain_more_from_int8_than_armv8_0():
    """The int8/fp32 ratio follows the ISA: ~1.5x without dotprod, >=2x with it or with VNNI."""
    for name in SHIPPED:
        profile = load_profile(name)
        if profile.device_class == "mcu":
            continue
        ratio = profile.compute.sustained_gops_int8 / profile.compute.sustained_gflops_fp32
        fast_int8 = {"asimd_dotprod", "i8mm", "avx_vnni"} & set(profile.hardware.features)
        assert (ratio >= 2.0) if fast_int8 else (1.2 <= ratio < 2.0), (name, ratio)


# ---------------------------------------------------------------- bad inputs

def base_doc() -> dict:
    return yaml.safe_load(known_profiles()["rpi4-4gb"].read_text())


def write(tmp_path: Path, doc: dict, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def load_error(path) -> str:
    with pytest.raises(InputError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _del(doc, key):
    *parents, last = key.split(".")
    for p in parents:
        doc = doc[p]
    del doc[last]


def _set(doc, key, value):
    *parents, last = key.split(".")
    for p in parents:
        doc = doc[p]
    doc[last] = value


def test_missing_field(tmp_path):
    doc = base_doc()
    _del(doc, "hardware.cores")
    path = write(tmp_path, doc)
    message = load_error(path)
    assert str(path) in message and "missing field 'hardware.cores'" in message


def test_missing_top_level_block(tmp_path):
    doc = base_doc()
    del doc["budget"]
    message = load_error(write(tmp_path, doc))
    assert "missing field 'budget'" in message


def test_unknown_field(tmp_path):
    doc = base_doc()
    doc["hardware"]["gpu_cores"] = 128
    path = write(tmp_path, doc)
    message = load_error(path)
    assert str(path) in message and "unknown field 'hardware.gpu_cores'" in message
    assert "cores" in message  # lists the known fields


@pytest.mark.parametrize("key", ["budget.latency_target_ms", "hardware.cores", "compute.sustained_gops_int8",
                                 "budget.resident_factor.int8"])
@pytest.mark.parametrize("value", [0, -5])
def test_non_positive_figure(tmp_path, key, value):
    doc = base_doc()
    _set(doc, key, value)
    path = write(tmp_path, doc)
    message = load_error(path)
    assert str(path) in message and f"'{key}' must be positive" in message and str(value) in message


@pytest.mark.parametrize("key,value,expect", [
    ("hardware.cores", "four", "must be a number"),
    ("compute.sustained_gflops_fp32", "18 GFLOP/s", "must be a number"),
    ("hardware.cores", 4.5, "must be a whole number"),
    ("hardware.cores", True, "must be a number"),
    ("name", 5, "must be a string"),
    ("hardware.isa", 64, "must be a string"),
    ("runtime.enable_cpu_mem_arena", 1, "must be true or false"),
    ("runtime.enable_cpu_mem_arena", "on", "must be true or false"),
    ("hardware.features", "neon", "must be a list of strings"),
    ("runtime.session_config", ["a"], "must be a mapping"),
    ("hardware", 5, "must be a mapping"),
])
def test_wrong_type(tmp_path, key, value, expect):
    doc = base_doc()
    _set(doc, key, value)
    path = write(tmp_path, doc)
    message = load_error(path)
    assert str(path) in message and f"'{key}'" in message and expect in message


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    lines = known_profiles()["rpi4-4gb"].read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("hardware:"))
    lines.insert(at + 2, "  cpu: [unclosed, list")
    path = tmp_path / "broken.yaml"
    path.write_text("\n".join(lines) + "\n")
    message = load_error(path)
    assert str(path) in message and "YAML syntax error" in message
    line = int(message.split(" line ")[1].split()[0])
    assert at + 2 <= line <= at + 5  # the broken line or the one the parser stops at


def test_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert "must be a YAML mapping" in load_error(path)


def test_unknown_profile_name_lists_known_ones():
    message = load_error("rpi9-64gb")
    assert "unknown device profile 'rpi9-64gb'" in message
    for name in NAMED:
        assert name in message


def test_missing_profile_file(tmp_path):
    path = tmp_path / "absent.yaml"
    message = load_error(path)
    assert str(path) in message and "not found" in message


def test_missing_source_for_a_figure(tmp_path):
    doc = base_doc()
    del doc["sources"]["compute.sustained_gops_int8"]
    path = write(tmp_path, doc)
    message = load_error(path)
    assert str(path) in message and "'sources.compute.sustained_gops_int8' is missing" in message


def test_source_without_tag(tmp_path):
    doc = base_doc()
    doc["sources"]["hardware.cores"] = "BCM2711 product brief"
    message = load_error(write(tmp_path, doc))
    assert "'sources.hardware.cores' must start with one of [M] [S] [D] [E]" in message


def test_optional_figure_needs_a_source_too(tmp_path):
    doc = base_doc()
    del doc["sources"]["compute.peak_gflops_fp32"]
    assert "'sources.compute.peak_gflops_fp32' is missing" in load_error(write(tmp_path, doc))
    del doc["compute"]["peak_gflops_fp32"]  # without the figure, no source is needed
    assert load_profile(write(tmp_path, doc, "nopeak.yaml")).compute.peak_gflops_fp32 is None


def test_ram_available_above_ram(tmp_path):
    doc = base_doc()
    doc["hardware"]["ram_available_bytes"] = doc["hardware"]["ram_bytes"] + 1
    message = load_error(write(tmp_path, doc))
    assert "'hardware.ram_available_bytes' cannot exceed hardware.ram_bytes" in message


def test_memory_fraction_above_one(tmp_path):
    doc = base_doc()
    doc["budget"]["model_memory_fraction"] = 1.5
    message = load_error(write(tmp_path, doc))
    assert "'budget.model_memory_fraction' must be at most 1" in message and "1.5" in message


@pytest.mark.parametrize("key,value", [("runtime.precision", "fp16"), ("status", "maybe"),
                                       ("runtime.execution_mode", "async")])
def test_bad_choice(tmp_path, key, value):
    doc = base_doc()
    _set(doc, key, value)
    path = write(tmp_path, doc)
    message = load_error(path)
    assert str(path) in message and f"'{key}' must be one of" in message and repr(value) in message


def test_wrong_schema_or_version(tmp_path):
    doc = base_doc()
    doc["version"] = 2
    assert "'version' must be 1" in load_error(write(tmp_path, doc))
    doc = base_doc()
    doc["schema"] = "sensibert.plan"
    assert "'schema' must be" in load_error(write(tmp_path, doc, "schema.yaml"))


# ---------------------------------------------------------------- a user's own file

def test_user_profile_path_works_like_a_name(tmp_path, monkeypatch):
    """A copy of a shipped profile with edited figures loads by absolute path, str or Path,
    by relative path, and with a .yml suffix; the budget arithmetic accepts it."""
    from toolchain.budget import derive_budget

    doc = copy.deepcopy(base_doc())
    doc["id"] = "my-board"
    doc["hardware"]["ram_available_bytes"] = 1_000_000_000
    path = write(tmp_path, doc, "my-board.yaml")
    for ref in (path, str(path)):
        profile = load_profile(ref)
        assert profile.id == "my-board" and profile.path == str(path)
        assert profile.model_memory_bytes == 500_000_000
    yml = write(tmp_path, doc, "other.yml")
    assert load_profile(yml).id == "my-board"
    monkeypatch.chdir(tmp_path)
    assert load_profile("my-board.yaml").id == "my-board"
    budget = derive_budget(load_profile(path), minilm_l6_shape())
    assert budget.profile == "my-board"
    assert budget.memory_for_model_bytes == 500_000_000
