"""Budgets: turn a device profile, a parameter count, a FLOPs count or a keep fraction into the
``Budget`` the allocator must meet. Pure arithmetic on ``EncoderShape``; no torch, no I/O.

All budgets are expressed on what a plan can change: the encoder's *trimmable* parameters
(heads and FFN neurons) and the encoder's matmul FLOPs. Fixed parts (embeddings, LayerNorms,
biases, pooler, classifier) are subtracted first; if they alone exceed the budget, the
budget is infeasible and the error says so with the numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import logging
from typing import Any, Sequence

from deploy.latency_table import predict
from deploy.profile import DeviceProfile
from toolchain import costs
from toolchain.costs import EncoderShape
from toolchain.errors import InfeasibleBudget, InputError

MAX_SEQ_LEN = 8192
MAX_LATENCY_MS = 3_600_000.0


@dataclass(frozen=True)
class Budget:
    """What a plan must meet: caps on trimmable encoder parameters and on encoder FLOPs."""

    max_trimmable_params: int | None
    max_encoder_flops: int | None
    seq_len: int = 128
    batch: int = 1
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_trimmable_params is None and self.max_encoder_flops is None:
            raise ValueError("a budget needs a parameter cap, a FLOPs cap, or both")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeviceBudget:
    """What a device allows a model: the memory and latency limits and which one binds."""

    profile: str
    precision: str
    batch: int
    seq_len: int
    latency_target_ms: float
    memory_for_model_bytes: int
    overhead_bytes: int
    activation_bytes: int
    resident_factor: float
    max_weight_bytes: int
    max_params: int
    max_flops: int
    fixed_params: int
    fixed_flops: int
    dense_params: int
    dense_flops: int
    dense_trimmable_params: int
    keep_memory: float
    keep_latency: float
    binding: str
    feasible: bool
    fixed_weight_bytes: int = 0    # the untrimmed parts' bytes at this precision (costs.fixed_weight_bytes)

    @property
    def keep(self) -> float:
        """Return the fraction of trimmable encoder parameters the trimmer will enforce (≤ 1)."""
        return max(0.0, min(1.0, self.keep_memory, self.keep_latency))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "keep": self.keep}

    def to_budget(self) -> Budget:
        """Return the allocator's budget: both caps, so whichever binds is met."""
        if not self.feasible:
            raise InfeasibleBudget(self.infeasible_reason())
        bytes_per = costs.BYTES_PER_WEIGHT[self.precision]
        max_trimmable = min(self.dense_trimmable_params,
                            (self.max_weight_bytes - self.fixed_weight_bytes) // bytes_per)
        return Budget(max_trimmable_params=max_trimmable,
                      max_encoder_flops=min(self.dense_flops, self.max_flops) - self.fixed_flops,
                      seq_len=self.seq_len, batch=self.batch,
                      source={"kind": "profile", "profile": self.profile, "precision": self.precision,
                              "latency_target_ms": self.latency_target_ms})

    def infeasible_reason(self) -> str:
        """Return the one-line explanation of why nothing fits."""
        if self.max_params < self.fixed_params:
            return (f"profile '{self.profile}' is infeasible for this model: the untrimmed parts alone "
                    f"need {self.fixed_params / 1e6:.2f}M parameters ({_mib(self.fixed_weight_bytes)} "
                    f"at {self.precision}) but the memory allows {max(self.max_params, 0) / 1e6:.2f}M "
                    f"({_mib(max(self.max_weight_bytes, 0))} of weights out of {_mib(self.memory_for_model_bytes)} "
                    "for the model); choose a larger device or a smaller base model")
        return (f"profile '{self.profile}' is infeasible for this model: the untrimmed parts alone need "
                f"{self.fixed_flops / 1e9:.3f} GFLOP at seq {self.seq_len} but {self.latency_target_ms:g} ms "
                f"allows {self.max_flops / 1e9:.3f} GFLOP; raise --latency-ms, lower --seq-len or "
                "choose a faster device")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def fixed_encoder_flops(shape: EncoderShape, batch: int, seq: int) -> int:
    """Return FLOPs no plan removes: pooler and classifier (layers with no units cost nothing)."""
    return costs.head_flops(shape, batch)


def check_seq_len(seq_len: int, shape: EncoderShape | None = None) -> int:
    """Return ``seq_len`` if the model can take it, else raise InputError with the valid range."""
    upper = shape.max_positions if shape is not None else MAX_SEQ_LEN
    if not isinstance(seq_len, int) or not 1 <= seq_len <= upper:
        raise InputError(f"sequence length {seq_len} is out of range; choose 1..{upper} "
                         "(the model's max_position_embeddings)")
    return seq_len


def check_latency(latency_ms: float) -> float:
    """Return ``latency_ms`` if it is a usable target, else raise InputError."""
    if not 0 < latency_ms <= MAX_LATENCY_MS:
        raise InputError(f"latency target {latency_ms} ms is out of range; choose a value in "
                         f"(0, {MAX_LATENCY_MS:g}] milliseconds")
    return latency_ms


def derive_budget(profile: DeviceProfile, shape: EncoderShape, precision: str | None = None,
                  seq_len: int | None = None, latency_ms: float | None = None,
                  batch: int | None = None) -> DeviceBudget:
    """Return the budget a device imposes on a model (METHOD.md "Device profile → budget").

    memory: (RAM for the app × share − overhead − activations) / resident factor / bytes per
    weight gives the largest weight footprint; compute: sustained rate × latency target gives
    the FLOPs per inference. Both are converted to a keep fraction of the trimmable encoder.
    """
    precision = precision or profile.runtime.precision
    if precision not in costs.BYTES_PER_WEIGHT:
        raise InputError(f"unknown precision {precision!r}; choose fp32 or int8")
    seq_len = check_seq_len(seq_len if seq_len is not None else profile.budget.seq_len, shape)
    latency_ms = check_latency(latency_ms if latency_ms is not None else profile.budget.latency_target_ms)
    batch = batch or profile.budget.batch

    resident = getattr(profile.budget.resident_factor, precision)
    overhead = profile.budget.runtime_overhead_bytes
    activations = costs.activation_bytes(shape, batch, seq_len)
    memory = profile.model_memory_bytes
    transient = profile.budget.load_transient_bytes or 0
    max_weight_bytes = costs.max_weight_bytes(memory, resident, overhead, activations, transient)

    dense_params = costs.total_params(shape)
    fixed = costs.fixed_params(shape)
    trimmable = costs.trimmable_params(shape)
    bytes_per = costs.BYTES_PER_WEIGHT[precision]
    fixed_bytes = costs.fixed_weight_bytes(shape, precision)
    max_trimmable = (max_weight_bytes - fixed_bytes) // bytes_per
    max_params = fixed + max_trimmable if max_weight_bytes >= fixed_bytes else max_weight_bytes // 4

    max_flops = int(profile.compute.sustained(precision) * 1e9 * latency_ms / 1e3)
    dense_flops = costs.total_flops(shape, batch, seq_len)
    fixed_flops = fixed_encoder_flops(shape, batch, seq_len)
    dense_encoder_flops = dense_flops - fixed_flops

    keep_memory = max_trimmable / trimmable if trimmable else 1.0
    keep_latency = (max_flops - fixed_flops) / dense_encoder_flops if dense_encoder_flops else 1.0
    feasible = max_weight_bytes >= fixed_bytes and max_flops > fixed_flops
    if min(keep_memory, keep_latency) >= 1.0:
        binding = "none"
    else:
        binding = "memory" if keep_memory <= keep_latency else "latency"
    return DeviceBudget(profile=profile.id, precision=precision, batch=batch, seq_len=seq_len,
                        latency_target_ms=latency_ms, memory_for_model_bytes=memory,
                        overhead_bytes=overhead, activation_bytes=activations, resident_factor=resident,
                        max_weight_bytes=max_weight_bytes, max_params=max_params, max_flops=max_flops,
                        fixed_params=fixed, fixed_flops=fixed_flops, dense_params=dense_params,
                        dense_flops=dense_flops, dense_trimmable_params=trimmable,
                        keep_memory=keep_memory, keep_latency=keep_latency, binding=binding,
                        feasible=feasible, fixed_weight_bytes=fixed_bytes)


def budget_from_params(shape: EncoderShape, max_params: int, seq_len: int = 128) -> Budget:
    """Return the budget for a cap on the model's total parameter count."""
    fixed = costs.fixed_params(shape)
    if max_params < fixed:
        raise InfeasibleBudget(f"--params {max_params} is below the untrimmed parts of the model "
                               f"({fixed} parameters); raise --params")
    return Budget(max_trimmable_params=max_params - fixed, max_encoder_flops=None, seq_len=seq_len,
                  source={"kind": "params", "max_params": max_params})


def budget_from_flops(shape: EncoderShape, max_flops: int, seq_len: int, batch: int = 1) -> Budget:
    """Return the budget for a cap on FLOPs per inference at (batch, seq_len)."""
    fixed = fixed_encoder_flops(shape, batch, check_seq_len(seq_len, shape))
    if max_flops <= fixed:
        raise InfeasibleBudget(f"--flops {max_flops} is below the untrimmed parts of the model "
                               f"({fixed} FLOPs at seq {seq_len}); raise --flops")
    return Budget(max_trimmable_params=None, max_encoder_flops=max_flops - fixed, seq_len=seq_len,
                  batch=batch, source={"kind": "flops", "max_flops": max_flops})


def budget_from_keep(shape: EncoderShape, keep: float, seq_len: int = 128) -> Budget:
    """Return the budget keeping a fraction of the trimmable encoder parameters."""
    if not 0 < keep <= 1:
        raise InputError(f"--keep {keep} is out of range; choose a fraction in (0, 1]")
    return Budget(max_trimmable_params=int(keep * costs.trimmable_params(shape)), max_encoder_flops=None,
                  seq_len=seq_len, source={"kind": "keep", "keep": keep})


# ---------------------------------------------------------------- latency (a measured table)

def layer_units(groups: Sequence[Any], units: Sequence[int], num_layers: int | None = None
                ) -> tuple[list[int], list[int]]:
    """Return (heads, ffn) per layer from a plan's groups (each a ``layer`` and a ``kind``) and
    their unit counts (``num_layers``: the model's, default the groups' highest layer + 1)."""
    layers = num_layers if num_layers is not None else 1 + max((g.layer for g in groups), default=-1)
    heads, ffn = [0] * layers, [0] * layers
    for group, count in zip(groups, units):
        (heads if group.kind == "attn" else ffn)[group.layer] = count
    return heads, ffn


@dataclass(frozen=True)
class LatencyBudget:
    """A latency cap priced by a measured table (``deploy.latency_table.LatencyTable``): what the
    ``latency`` allocation plans against. A block's time is not linear in its units (each kernel
    call has a fixed cost), so it is looked up per allowed unit count, 0 included."""

    table: Any
    max_ms: float
    seq_len: int

    def block_ms(self, group: Any, units: int) -> float:
        """Return the time of one sub-layer (a plan group: its ``kind``) with ``units`` units."""
        return self.table.block_ms(group.kind, units, self.seq_len)

    def total_ms(self, groups: Sequence[Any], units: Sequence[int]) -> float:
        """Return the predicted latency (``deploy.latency_table.predict``): the fixed part plus
        every sub-layer at its units, a layer left with none costing nothing (it is removed)."""
        return predict(self.table, *layer_units(groups, units), self.seq_len)

    def describe(self) -> dict[str, Any]:
        t = self.table
        return {"cost_model": "latency table", "tag": t.tag, "host": t.host, "precision": t.precision,
                "runtime": t.runtime, "max_ms": self.max_ms, "seq_len": self.seq_len,
                "fixed_measured": bool(t.fixed_ms)}


def latency_budget(profile: DeviceProfile, precision: str, seq_len: int,
                   latency_ms: float | None = None) -> LatencyBudget:
    """Return the latency cap of a profile (its target, or ``latency_ms``) priced by its measured
    table for ``precision``. A profile without a table is one line saying how to calibrate; a
    table measured with other runtime settings or onnxruntime version is a warning that says it."""
    from deploy.latency_table import profile_tables, runtime_mismatch, runtime_record
    from deploy.session import session_settings

    tables = profile_tables(profile)
    if not tables:
        raise InputError(f"profile {profile.id} has no latency table; run `sensibert-deploy calibrate --profile "
                         f"{profile.id} --latency-table` on the device (or choose another --allocation)")
    if precision not in tables:
        raise InputError(f"profile {profile.id}'s latency table has no {precision} timings (it has "
                         f"{', '.join(tables)}); re-run sensibert-deploy calibrate --latency-table")
    table = tables[precision]
    mismatch = runtime_mismatch(table, runtime_record(session_settings(profile.runtime)))
    if mismatch:  # the timings still rank plans; their absolute values may be off
        logging.getLogger(__name__).warning(
            f"profile {profile.id}'s latency table was measured with other runtime settings ({'; '.join(mismatch)}); "
            "re-run sensibert-deploy calibrate --latency-table with this profile for measured predictions")
    return LatencyBudget(table=table, max_ms=float(latency_ms or profile.budget.latency_target_ms), seq_len=seq_len)
