"""The artifact manifest: every file hashed, round trip, and refusal of altered or missing files."""

from __future__ import annotations

import json

import pytest

from deploy.artifacts import sha256_file
from deploy.errors import DeployError, InputError
from deploy.manifest import MANIFEST_NAME, PROFILE_NAME, read_manifest, write_manifest
from deploy.profile import load_profile

TASK = dict(task="sst2", task_kind="single", label_names=["negative", "positive"], max_length=64,
            models={"fp32": "model.onnx", "int8": "model.int8.onnx"})


@pytest.fixture
def folder(tmp_path):
    """An artifact-shaped folder; the manifest does not look inside the files."""
    out = tmp_path / "art"
    (out / "extra").mkdir(parents=True)
    (out / "model.onnx").write_bytes(b"fp32 model bytes")
    (out / "model.int8.onnx").write_bytes(b"int8 model bytes")
    (out / "tokenizer.json").write_text('{"model": "wordpiece"}')
    (out / "extra" / "notes.txt").write_text("nested files are hashed too")
    (out / ".hidden.tmp").write_text("temporary files are not part of the artifact")
    return out


def test_round_trip_hashes_every_file(folder):
    written = write_manifest(folder, **TASK, extra={"parity_max_abs": 1e-6})
    assert set(written.files) == {"model.onnx", "model.int8.onnx", "tokenizer.json", "extra/notes.txt"}
    for name, record in written.files.items():
        assert record.sha256 == sha256_file(folder / name)
        assert record.size == (folder / name).stat().st_size
    read = read_manifest(folder)
    assert read == written
    assert read.label_names == ("negative", "positive") and read.max_length == 64
    assert read.model_path("int8") == folder / "model.int8.onnx"
    assert read.default_precision() == "fp32"
    assert read.extra == {"parity_max_abs": 1e-6}
    doc = json.loads((folder / MANIFEST_NAME).read_text())
    assert doc["schema"] == "sensibert.artifact" and doc["version"] == 1
    assert "onnxruntime" in doc["package_versions"]


def test_profile_copy_is_written_hashed_and_loadable(folder):
    manifest = write_manifest(folder, **TASK, profile=load_profile("rpi4-4gb"))
    assert manifest.profile_id == "rpi4-4gb" and PROFILE_NAME in manifest.files
    copy = load_profile(manifest.profile_path)
    assert copy.id == "rpi4-4gb"
    assert copy.runtime == load_profile("rpi4-4gb").runtime


@pytest.mark.parametrize("change", ["same_size", "appended"])
def test_altered_file_is_named(folder, change):
    write_manifest(folder, **TASK)
    target = folder / "tokenizer.json"
    data = target.read_bytes()
    target.write_bytes(data[:-1] + b"]" if change == "same_size" else data + b" ")
    with pytest.raises(DeployError, match=r"tokenizer\.json: hash mismatch"):
        read_manifest(folder)
    assert read_manifest(folder, verify=False).task == "sst2"  # verify=False skips the hashes


def test_missing_file_is_named(folder):
    write_manifest(folder, **TASK)
    (folder / "extra" / "notes.txt").unlink()
    with pytest.raises(DeployError, match=r"notes\.txt: artifact file missing"):
        read_manifest(folder)


def test_not_an_artifact(tmp_path):
    with pytest.raises(DeployError, match="no sensibert.json"):
        read_manifest(tmp_path)


def test_unknown_manifest_field_rejected(folder):
    write_manifest(folder, **TASK)
    doc = json.loads((folder / MANIFEST_NAME).read_text())
    doc["surprise"] = 1
    (folder / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(DeployError, match="unknown field 'surprise'"):
        read_manifest(folder)


@pytest.mark.parametrize("override, message", [
    ({"models": {"fp16": "model.onnx"}}, "unknown precision 'fp16'"),
    ({"models": {"fp32": "absent.onnx"}}, "absent.onnx: model file for fp32 not found"),
    ({"models": {"fp32": "../model.onnx"}}, "must be a file name inside the artifact folder"),
    ({"task_kind": "triple"}, "task_kind must be one of single, pair"),
    ({"label_names": ["only"]}, "at least two"),
    ({"label_names": ["a", "a"]}, "distinct"),
    ({"max_length": 0}, "max_length must be a positive"),
])
def test_write_rejects_bad_input(folder, override, message):
    with pytest.raises(InputError, match=message):
        write_manifest(folder, **{**TASK, **override})
    assert not (folder / MANIFEST_NAME).exists()


def test_write_needs_tokenizer(folder):
    (folder / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="tokenizer.json: tokenizer"):
        write_manifest(folder, **TASK)
