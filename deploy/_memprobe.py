"""Fresh-process memory probe: ``python -m deploy._memprobe REQUEST.json RESULT.json``.

Runs only an onnxruntime session on saved inputs, so its peak resident memory is the model's
process, not the benchmark's (tokenizer, timings, an earlier session). Resident memory is
read before importing numpy and onnxruntime, after creating the session and after the runs;
the peak is the kernel's high-water mark (VmHWM, else ru_maxrss).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _status_bytes(key: str) -> int | None:
    """Return a ``/proc/self/status`` memory field in bytes (Linux), or None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Return the current resident set size in bytes."""
    value = _status_bytes("VmRSS")
    if value is None:
        import psutil

        value = psutil.Process().memory_info().rss
    return value


def peak_rss_bytes() -> tuple[int, str]:
    """Return (peak resident set size in bytes, where it was read)."""
    value = _status_bytes("VmHWM")
    if value is not None:
        return value, "VmHWM"
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024), "ru_maxrss"  # bytes on macOS, KiB elsewhere


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    out = {"rss_start_bytes": rss_bytes()}
    import numpy as np
    import onnxruntime  # noqa: F401  (imported here so its cost lands in rss_after_import)

    from deploy.session import SessionSettings, open_session

    out["rss_after_import_bytes"] = rss_bytes()
    settings = SessionSettings(**{k: v for k, v in request["settings"].items() if k != "warnings"})
    with np.load(request["inputs"]) as data:
        feed = {name: data[name] for name in data.files}
    start = time.perf_counter()
    session = open_session(request["model"], settings=settings)
    out["load_ms"] = (time.perf_counter() - start) * 1e3
    out["rss_after_session_bytes"] = rss_bytes()
    for _ in range(int(request["warmup"]) + int(request["runs"])):
        session.run(None, feed)
    out["rss_after_runs_bytes"] = rss_bytes()
    out["peak_rss_bytes"], out["peak_source"] = peak_rss_bytes()
    Path(argv[1]).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
