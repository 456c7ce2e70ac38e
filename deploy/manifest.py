"""The artifact folder: ONNX models, tokenizer.json and ``sensibert.json``, which hashes every file.

An artifact is what the toolchain ships to a device. ``sensibert.json`` says what task the
models solve, which file holds which precision, and the sha256 and size of every other file,
so the device side can refuse a folder that was altered or copied incompletely.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from deploy.artifacts import atomic_path, package_versions, read_json, sha256_file, write_json
from deploy.errors import DeployError, InputError

SCHEMA = "sensibert.artifact"
VERSION = 1
MANIFEST_NAME = "sensibert.json"
TOKENIZER_NAME = "tokenizer.json"
PROFILE_NAME = "profile.yaml"
TASK_KINDS = ("single", "pair", "qa")  # qa: extractive question answering (start and end logits)
PRECISIONS = ("fp32", "int8")
_KEYS = ("task", "task_kind", "label_names", "max_length", "models", "tokenizer", "profile",
         "profile_id", "files", "package_versions", "extra")


@dataclass(frozen=True)
class FileRecord:
    """Hash and size of one file of the artifact."""

    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What ``sensibert.json`` says about an artifact folder."""

    folder: Path
    task: str
    task_kind: str
    label_names: tuple[str, ...]
    max_length: int
    models: Mapping[str, str]
    files: Mapping[str, FileRecord]
    package_versions: Mapping[str, str]
    tokenizer: str = TOKENIZER_NAME
    profile: str | None = None
    profile_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / self.tokenizer

    @property
    def profile_path(self) -> Path | None:
        """Return the path of the profile copy the artifact was built for, if it has one."""
        return self.folder / self.profile if self.profile else None

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.models)

    def default_precision(self) -> str:
        """Return fp32 when the artifact has it (the reference numerics), else its first model."""
        return "fp32" if "fp32" in self.models else next(iter(self.models))

    def model_path(self, precision: str) -> Path:
        """Return the model file of a precision; an absent one is an error that lists the others."""
        if precision not in self.models:
            raise DeployError(f"{self.folder}: artifact has no {precision} model; it has "
                              f"{', '.join(self.models)} (pass --precision {next(iter(self.models))})")
        return self.folder / self.models[precision]

    def runnable_model(self, precision: str) -> Path:
        """Return the model file of a precision to open a session on, after checking that this
        onnxruntime has the operators its int8 variant needs (recorded by the export)."""
        path = self.model_path(precision)
        variant = (self.extra.get("int8") or {}).get("variant") if precision == "int8" else None
        if variant:
            from deploy.int8 import check_runtime

            check_runtime(variant)
        return path

    def model_sha256(self, precision: str) -> str:
        self.model_path(precision)
        return self.files[self.models[precision]].sha256

    def to_dict(self) -> dict[str, Any]:
        """Return the body of ``sensibert.json`` (without the schema header)."""
        return {"task": self.task, "task_kind": self.task_kind, "label_names": list(self.label_names),
                "max_length": self.max_length, "models": dict(self.models), "tokenizer": self.tokenizer,
                "profile": self.profile, "profile_id": self.profile_id,
                "files": {name: {"sha256": rec.sha256, "size": rec.size} for name, rec in self.files.items()},
                "package_versions": dict(self.package_versions), "extra": dict(self.extra)}


def write_manifest(folder: str | os.PathLike, *, task: str, task_kind: str, label_names: list[str],
                   max_length: int, models: dict[str, str], profile: Any | None = None,
                   extra: dict | None = None) -> Manifest:
    """Hash every file of ``folder`` and write its ``sensibert.json``; return the manifest.

    ``models`` maps a precision (fp32, int8) to a model file name inside the folder; the folder
    must also hold ``tokenizer.json``. With a ``profile`` (a ``deploy.profile.DeviceProfile``), a
    copy is written as ``profile.yaml`` and hashed with the rest. Call it last, after every
    other file is in place: a file added later fails verification.

    Example:
        >>> write_manifest(out, task="sst2", task_kind="single", label_names=["negative", "positive"],
        ...                max_length=128, models={"fp32": "model.onnx", "int8": "model.int8.onnx"})
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: artifact folder not found; export the models into it first")
    _check_task(task, task_kind, label_names, max_length)
    if not isinstance(models, dict) or not models:
        raise InputError(f"models must map a precision to a file name, got {models!r}; "
                         "e.g. {'fp32': 'model.onnx'}")
    for precision, name in models.items():
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r} in models; choose from {', '.join(PRECISIONS)}")
        _check_member(folder, name, f"model file for {precision}")
    _check_member(folder, TOKENIZER_NAME, "tokenizer (save it with tokenizer.backend_tokenizer.save)")
    extra = dict(extra or {})
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise InputError(f"extra must be JSON-serialisable ({exc}); pass plain numbers, strings, "
                         "lists and dicts") from None
    profile_name = profile_id = None
    if profile is not None:
        profile_name, profile_id = PROFILE_NAME, profile.id
        _write_profile_copy(profile, folder / PROFILE_NAME)
    files = {name: FileRecord(sha256_file(folder / name), (folder / name).stat().st_size)
             for name in _artifact_files(folder)}
    manifest = Manifest(folder=folder, task=task, task_kind=task_kind, label_names=tuple(label_names),
                        max_length=int(max_length), models=dict(models), files=files,
                        package_versions=package_versions(), profile=profile_name,
                        profile_id=profile_id, extra=extra)
    write_json(folder / MANIFEST_NAME, SCHEMA, VERSION, manifest.to_dict())
    return manifest


def read_manifest(folder: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read an artifact's ``sensibert.json``; with ``verify``, check every file's size and sha256."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        hint = "; pass the artifact folder, not the model file" if folder.is_file() else ""
        raise DeployError(f"{folder}: no {MANIFEST_NAME} found; not a sensibert artifact folder{hint}")
    body = read_json(path, SCHEMA, VERSION)
    unknown = sorted(set(body) - set(_KEYS))
    if unknown:
        raise DeployError(f"{path}: unknown field {unknown[0]!r}; the file was written by another "
                          "sensibert version or edited by hand; re-export the artifact")
    try:
        files = {str(name): FileRecord(str(rec["sha256"]), int(rec["size"])) for name, rec in body["files"].items()}
        manifest = Manifest(folder=folder, task=str(body["task"]), task_kind=str(body["task_kind"]),
                            label_names=tuple(str(n) for n in body["label_names"]),
                            max_length=int(body["max_length"]),
                            models={str(k): str(v) for k, v in body["models"].items()}, files=files,
                            package_versions=dict(body.get("package_versions") or {}),
                            tokenizer=str(body.get("tokenizer") or TOKENIZER_NAME),
                            profile=body.get("profile"), profile_id=body.get("profile_id"),
                            extra=dict(body.get("extra") or {}))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DeployError(f"{path}: malformed manifest ({type(exc).__name__}: {exc}); re-export the artifact") from None
    try:
        _check_task(manifest.task, manifest.task_kind, list(manifest.label_names), manifest.max_length)
    except InputError as exc:
        raise DeployError(f"{path}: {exc}") from None
    for name in (*manifest.models.values(), manifest.tokenizer, *([manifest.profile] if manifest.profile else [])):
        if name not in files:
            raise DeployError(f"{path}: {name} is used but not listed under files; re-export the artifact")
    if verify:
        verify_files(manifest)
    return manifest


def verify_files(manifest: Manifest) -> None:
    """Raise DeployError naming the first file that is missing or whose size or sha256 changed."""
    for name, rec in manifest.files.items():
        path = manifest.folder / name
        if not path.is_file():
            raise DeployError(f"{path}: artifact file missing; copy the whole artifact folder again")
        size = path.stat().st_size
        if size != rec.size:
            raise DeployError(f"{path}: hash mismatch (size {size} bytes, manifest says {rec.size}); "
                              "the file was altered or truncated; copy the artifact again")
        digest = sha256_file(path)
        if digest != rec.sha256:
            raise DeployError(f"{path}: hash mismatch (sha256 {digest[:12]}…, manifest says {rec.sha256[:12]}…); "
                              "the file was altered; copy the artifact again")


# ---------------------------------------------------------------- helpers


def _check_task(task: str, task_kind: str, label_names: list[str], max_length: int) -> None:
    if not isinstance(task, str) or not task:
        raise InputError(f"task must be a non-empty name such as 'sst2', got {task!r}")
    if task_kind not in TASK_KINDS:
        raise InputError(f"task_kind must be one of {', '.join(TASK_KINDS)}, got {task_kind!r}")
    if (not isinstance(label_names, (list, tuple)) or len(label_names) < 2
            or not all(isinstance(n, str) and n for n in label_names)):
        raise InputError(f"label_names must list at least two non-empty names, got {label_names!r}")
    if len(set(label_names)) != len(label_names):
        raise InputError(f"label_names must be distinct, got {list(label_names)!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise InputError(f"max_length must be a positive whole number of tokens, got {max_length!r}")


def _check_member(folder: Path, name: str, what: str) -> None:
    rel = PurePosixPath(name)
    if not isinstance(name, str) or rel.is_absolute() or ".." in rel.parts or name == MANIFEST_NAME:
        raise InputError(f"{what} must be a file name inside the artifact folder, got {name!r}")
    if not (folder / rel).is_file():
        raise InputError(f"{folder / rel}: {what} not found; write it into the artifact folder first")


def _artifact_files(folder: Path) -> list[str]:
    """Return every file below ``folder`` as a sorted posix path, except the manifest and hidden files."""
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and rel.as_posix() != MANIFEST_NAME and not any(p.startswith(".") for p in rel.parts):
            out.append(rel.as_posix())
    return sorted(out)


def _write_profile_copy(profile: Any, target: Path) -> None:
    import yaml

    from deploy.profile import load_profile

    doc = json.loads(json.dumps(profile.to_dict()))  # tuples and mappings to plain YAML types
    source = Path(profile.path).name if profile.path else "built in memory"
    header = f"# Copy of device profile {profile.id!r} ({source}) this artifact was built for.\n"
    table = (doc.get("compute") or {}).get("latency_table")
    if table and profile.path:  # the measured latency table travels with its profile
        import shutil

        doc["compute"]["latency_table"] = f"{target.stem}.latency.json"
        shutil.copy2(Path(profile.path).parent / table, target.parent / doc["compute"]["latency_table"])
    with atomic_path(target) as tmp:
        tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=100))
        load_profile(tmp)  # the copy must load again
