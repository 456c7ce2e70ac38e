"""Artifact files: a schema header, strict loading, atomic writes and hashes.

Every JSON file sensibert writes starts with ``{"schema": ..., "version": ...}`` so that a
loader can refuse files of another kind or version with one clear line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from deploy.errors import InputError

_VERSIONED_PACKAGES = ("sensibert", "torch", "transformers", "optimum", "optimum-onnx", "onnx",
                       "onnxruntime", "numpy", "tokenizers")


def package_versions() -> dict[str, str]:
    """Return the installed versions of the packages that shape our artifacts."""
    out = {}
    for name in _VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks so large models do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Return the sha256 of a JSON-serialisable object in canonical form (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    Nothing already at ``target`` is touched when the body raises.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp/mkdtemp create owner-only files; give the result the permissions a plain open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask)
    try:
        yield tmp
        if is_dir and target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def check_writable(path: str | os.PathLike, flag: str = "--out") -> None:
    """Raise InputError unless ``path`` can be created: no existing part of it is a regular file
    (other than the path itself), and its nearest existing folder is writable."""
    path = Path(path).expanduser()
    parent = path.parent
    for part in [parent, *parent.parents]:
        if part.exists():
            if not part.is_dir():
                raise InputError(f"{flag} {path}: {part} is a file, not a folder; choose a path under a folder")
            if not os.access(part, os.W_OK | os.X_OK):
                raise InputError(f"{flag} {path}: {part} is not writable; choose a writable location")
            return


def write_json(path: str | os.PathLike, schema: str, version: int, body: dict[str, Any]) -> Path:
    """Write ``body`` under a schema header, atomically; return the path."""
    doc = {"schema": schema, "version": version, **body}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, default=_jsonable) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike, schema: str, version: int) -> dict[str, Any]:
    """Read a file written by ``write_json``; refuse another schema or version with one line."""
    return read_versioned(path, schema, (version,))[1]


def read_versioned(path: str | os.PathLike, schema: str, versions: tuple[int, ...]) -> tuple[int, dict[str, Any]]:
    """Return (version, body) of a file written by ``write_json`` in any of ``versions`` (the last
    is the current one), for a reader that still understands older files; refuse the rest."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found; pass the path of a {schema} file")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); regenerate it with sensibert") from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        seen = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"{path}: expected a {schema} file, found schema {seen!r}; pass the right file")
    if doc.get("version") not in versions:
        raise InputError(f"{path}: {schema} version {doc.get('version')!r} is not supported "
                         f"(this sensibert reads version {versions[-1]}); regenerate the file")
    body = dict(doc)
    body.pop("schema")
    return body.pop("version"), body


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")
