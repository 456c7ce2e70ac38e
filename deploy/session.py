"""onnxruntime sessions built from a device profile's runtime block.

Threads are always set explicitly: onnxruntime's default pool is sized to the host's physical
cores and ignores CPU quotas and affinity masks, which oversubscribes containers and small
boards (research notes §8.1).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from deploy.errors import DeployError, InputError

if TYPE_CHECKING:  # onnxruntime is imported lazily: `deploy` must import fast on a small board
    import onnxruntime as ort

    from deploy.profile import Runtime

log = logging.getLogger("deploy")
PROVIDERS = ("CPUExecutionProvider",)
# onnxruntime accepts any string for these and silently treats anything but "1" as off.
_BOOLEAN_CONFIG_KEYS = frozenset({
    "session.disable_prepacking", "session.intra_op.allow_spinning", "session.inter_op.allow_spinning",
    "session.use_ort_model_bytes_directly", "session.use_ort_model_bytes_for_initializers",
    "session.disable_quant_qdq", "session.enable_quant_qdq_cleanup", "session.use_env_allocators",
    "session.set_denormal_as_zero", "mlas.enable_gemm_fastmath_arm64_bfloat16",
})


# onnxruntime's own graph rewrites that cost time here: SkipLayerNormFusion turns Add +
# LayerNormalization into its SkipLayerNormalization kernel, 8× slower on a [128, 384] input
# (2.9 ms against 0.36 + 0.66 ms per run of MiniLM on the x86 benchmark host, ORT 1.32,
# bench/results/speed_ops.json); a profile's runtime.disabled_optimizers overrides this.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


@dataclass(frozen=True)
class SessionSettings:
    """The session options actually applied, with any warning about them (recorded in results)."""

    intra_op_threads: int
    inter_op_threads: int = 1
    execution_mode: str = "sequential"
    enable_cpu_mem_arena: bool = True
    session_config: Mapping[str, str] = field(default_factory=dict)
    host_cpus: int = 1
    warnings: tuple[str, ...] = ()
    disabled_optimizers: tuple[str, ...] = DISABLED_OPTIMIZERS

    def to_dict(self) -> dict[str, Any]:
        return {"intra_op_threads": self.intra_op_threads, "inter_op_threads": self.inter_op_threads,
                "execution_mode": self.execution_mode, "enable_cpu_mem_arena": self.enable_cpu_mem_arena,
                "session_config": dict(self.session_config), "host_cpus": self.host_cpus,
                "warnings": list(self.warnings), "disabled_optimizers": list(self.disabled_optimizers)}


def host_cpu_count() -> int:
    """Return the CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def session_settings(runtime: Runtime | None, threads: int | None = None) -> SessionSettings:
    """Return the settings a session gets from a profile's runtime block and a thread override.

    Without a runtime block: one inter-op thread, sequential execution, and as many intra-op
    threads as the host gives this process.
    """
    host = host_cpu_count()
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"thread count must be a whole number ≥ 1, got {threads!r}")
    disabled = DISABLED_OPTIMIZERS
    if runtime is None:
        intra, inter, mode, arena, config = threads or host, 1, "sequential", True, {}
    else:
        intra = threads or runtime.intra_op_threads
        inter, mode = runtime.inter_op_threads, runtime.execution_mode
        arena, config = runtime.enable_cpu_mem_arena, dict(runtime.session_config)
        if runtime.disabled_optimizers is not None:
            disabled = tuple(runtime.disabled_optimizers)
    for key, value in config.items():
        if key in _BOOLEAN_CONFIG_KEYS and str(value) not in ("0", "1"):
            raise InputError(f"session config {key}={value!r}: onnxruntime reads only \"0\" or \"1\" here; "
                             "fix runtime.session_config in the profile")
    warnings = []
    if intra > host:
        warnings.append(f"intra_op_threads={intra} exceeds the {host} CPU(s) this host gives the process: "
                        "threads share cores, so host timings are oversubscribed; "
                        f"pass --threads {host} for a clean host reference")
    return SessionSettings(intra_op_threads=intra, inter_op_threads=inter, execution_mode=mode,
                           enable_cpu_mem_arena=arena, session_config=config, host_cpus=host,
                           warnings=tuple(warnings), disabled_optimizers=disabled)


def session_options(settings: SessionSettings) -> ort.SessionOptions:
    """Return onnxruntime SessionOptions carrying ``settings``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = settings.inter_op_threads
    opts.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if settings.execution_mode == "parallel"
                           else ort.ExecutionMode.ORT_SEQUENTIAL)
    opts.enable_cpu_mem_arena = settings.enable_cpu_mem_arena
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: optimizer notes would drown the CLI's output
    for key, value in settings.session_config.items():
        try:
            opts.add_session_config_entry(str(key), str(value))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise DeployError(f"session config {key}={value!r} rejected by onnxruntime ({_first_line(exc)}); "
                              "fix runtime.session_config in the profile") from None
    return opts


def open_session(model: str | os.PathLike | bytes, runtime: Runtime | None = None, threads: int | None = None,
                 *, settings: SessionSettings | None = None, profile_prefix: str | None = None
                 ) -> ort.InferenceSession:
    """Return an InferenceSession on the CPU provider with the profile's runtime settings.

    ``model`` is a path or the serialised model. Pass precomputed ``settings`` to reuse
    (and report) them yourself; otherwise their warnings are logged here. ``profile_prefix``
    turns on onnxruntime's profiler, writing its trace there (``deploy.opprofile``).
    """
    import onnxruntime as ort

    if settings is None:
        settings = session_settings(runtime, threads)
        for message in settings.warnings:
            log.warning(message)
    if isinstance(model, (bytes, bytearray)):
        source, where = bytes(model), "<in-memory model>"
    else:
        path = Path(model)
        if not path.is_file():
            raise DeployError(f"{path}: model file not found; pass an ONNX file or an artifact folder")
        source, where = str(path), str(path)
    opts = session_options(settings)
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=list(PROVIDERS),
                                    disabled_optimizers=list(settings.disabled_optimizers))
    except Exception as exc:  # InvalidProtobuf, InvalidGraph, Fail, NotImplemented ... from the C++ side
        raise DeployError(f"{where}: onnxruntime {ort.__version__} could not create a session "
                          f"({_first_line(exc)}); re-export the model or upgrade onnxruntime") from None


def timed_runs(session: Any, feeds: Sequence[Mapping[str, Any]], warmup: int = 0) -> list[float]:
    """Return the milliseconds of one ``session.run`` per feed, after ``warmup`` untimed runs
    (the feeds taken in turn): the one timing loop of bench, calibrate, ops and real lengths."""
    import time

    for i in range(warmup):
        session.run(None, feeds[i % len(feeds)])
    times = []
    for feed in feeds:
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
