"""The run's stage book (``state.json``): which stage ran with which key, what it returned.

A stage's key hashes its settings and the key of the stage before it: a re-run skips the
stages whose key is unchanged and whose files exist, and an interrupted run resumes at the
stage it was in.
"""

from __future__ import annotations

import errno
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from deploy.artifacts import read_json, sha256_json, write_json
from toolchain.errors import InputError

STATE_SCHEMA, STATE_VERSION = "sensibert.run_state", 1

class Stages:
    """The run's ``state.json``: which stage ran with which key, what it returned, how long it took."""

    def __init__(self, out: Path, identity: dict[str, Any], force: bool) -> None:
        self.out = out
        self.path = out / "state.json"
        self.force = force
        self.timings: dict[str, float] = {}
        self.skipped: list[str] = []
        self.ran: list[str] = []
        if self.path.is_file():
            state = read_json(self.path, STATE_SCHEMA, STATE_VERSION)
            if state.get("identity") != identity:
                if not force:
                    raise InputError(f"{out} holds another run's files (model {state['identity'].get('model_hash', '?')[:12]}, "
                                     f"task {state['identity'].get('task')}); choose a new --out or pass --force "
                                     "to replace them")
                self._clear()
                state = {}
        else:
            if out.is_dir() and any(out.iterdir()):
                if not force:
                    raise InputError(f"{out} is not empty and holds no sensibert run; choose a new --out "
                                     "or pass --force to replace its contents")
                self._clear()
            state = {}
        self.identity = identity
        self.stages: dict[str, Any] = state.get("stages", {})
        self._save()

    def _clear(self) -> None:
        for child in self.out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()

    def _save(self) -> None:
        write_json(self.path, STATE_SCHEMA, STATE_VERSION, {"identity": self.identity, "stages": self.stages})

    def run(self, name: str, settings: dict[str, Any], outputs: list[Path], fn: Callable[[], dict[str, Any]],
            upstream: str = "") -> tuple[dict[str, Any], str]:
        """Return (result, key) of a stage, running ``fn`` unless an identical run is recorded."""
        key = sha256_json({"settings": settings, "upstream": upstream})
        rec = self.stages.get(name)
        if not self.force and rec and rec.get("key") == key and rec.get("done") \
                and all(p.exists() for p in outputs):
            self.skipped.append(name)
            self.timings[name] = rec.get("wall_s", 0.0)
            print(f"[sensibert run] stage {name}: unchanged, skipped", flush=True)  # resuming is normal, not a warning
            return rec["result"], key
        self.stages[name] = {"key": key, "done": False, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._save()
        print(f"[sensibert run] stage {name} ...", flush=True)
        start = time.perf_counter()
        try:
            result = fn()
        except OSError as exc:
            raise io_error(exc, name) from None
        wall = round(time.perf_counter() - start, 2)
        self.stages[name] = {"key": key, "done": True, "wall_s": wall, "result": result}
        self.timings[name] = wall
        self.ran.append(name)
        self._save()
        return result, key


def io_error(exc: OSError, stage: str) -> InputError:
    what = {errno.ENOSPC: "the disk is full", errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
            errno.ENOTDIR: "a path component is not a folder"}.get(exc.errno, exc.strerror or str(exc))
    return InputError(f"stage {stage} cannot write {exc.filename or '--out'}: {what}; free space or choose a "
                      "writable --out (files of earlier stages are intact)")
