"""Stage 2: the plan, i.e. how many heads and FFN neurons each layer keeps under a budget.

``allocate(sensitivity, shape, budget, PlanConfig())`` is pure (no torch, no I/O, no
randomness): it turns group sensitivities and unit costs into per-layer unit counts that
never exceed the budget (both caps: trimmable parameters and encoder FLOPs) and come within
one unit of it. ``Plan`` is what ``sensibert plan`` writes (plan.json) and what fine-tuning
enforces. Allocations live in a registry (``@register_allocation``); see METHOD.md "Stage 2".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from deploy.artifacts import read_json, write_json
from deploy.latency_table import layer_removed
from toolchain import costs
from toolchain.budget import Budget, LatencyBudget, layer_units
from toolchain.costs import COST_MODELS, EncoderShape
from toolchain.errors import InfeasibleBudget, InputError
from toolchain.registry import Registry
from toolchain.sensitivity import Sensitivity, group_key

PLAN_SCHEMA = "sensibert.plan"
PLAN_VERSION = 1


def architecture_of(shape: EncoderShape) -> dict[str, int]:
    """Return the dense architecture a plan applies to (what must match at fine-tuning)."""
    return {"num_layers": shape.num_layers, "hidden": shape.hidden, "head_size": shape.head_size,
            "num_heads": max(shape.heads), "ffn_size": max(shape.ffn)}


@dataclass(frozen=True)
class Plan:
    """Units to keep per layer, with the budget it meets and what it costs."""

    model_hash: str
    architecture: dict[str, int]
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    allocation: str
    budget: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    binding: str = ""
    headroom: dict[str, Any] = field(default_factory=dict)
    sensitivity_hash: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["heads"], doc["ffn"] = list(self.heads), list(self.ffn)
        return doc

    def save(self, path: str | Path) -> Path:
        """Write plan.json atomically."""
        return write_json(path, PLAN_SCHEMA, PLAN_VERSION, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read plan.json; a malformed file is an InputError naming it."""
        body = read_json(path, PLAN_SCHEMA, PLAN_VERSION)
        try:
            body["heads"], body["ffn"] = tuple(body["heads"]), tuple(body["ffn"])
            plan = cls(**body)
        except (KeyError, TypeError) as exc:
            raise InputError(f"{path}: malformed plan ({exc}); regenerate it with sensibert plan") from None
        if len(plan.heads) != plan.architecture.get("num_layers") or len(plan.ffn) != len(plan.heads):
            raise InputError(f"{path}: malformed plan (per-layer lists do not match num_layers); "
                             "regenerate it with sensibert plan")
        return plan

    def check_architecture(self, shape: EncoderShape, origin: str = "plan") -> None:
        """Raise InputError when the plan was made for another architecture than ``shape``."""
        have = architecture_of(shape)
        if have != self.architecture:
            diff = ", ".join(f"{k} {self.architecture.get(k)} vs {v}" for k, v in have.items()
                             if self.architecture.get(k) != v)
            raise InputError(f"{origin} was made for another architecture ({diff}); "
                             "make a plan for this model with sensibert plan")


def dense_plan(shape: EncoderShape, model_hash: str = "") -> Plan:
    """Return the plan that keeps every unit (the dense baseline, fine-tuned by the same code)."""
    from toolchain.budget import budget_from_keep

    kept = shape
    cost, _, headroom = plan_cost(shape, kept, budget_from_keep(shape, 1.0))
    return Plan(model_hash=model_hash, architecture=architecture_of(shape), heads=tuple(shape.heads),
                ffn=tuple(shape.ffn), allocation="dense", budget=budget_from_keep(shape, 1.0).to_dict(),
                cost=cost, binding="none", headroom=headroom)


# ---------------------------------------------------------------- configuration

CAPS = ("params", "flops")  # index 0: trimmable encoder parameters; 1: encoder matmul FLOPs
LATENCY = "latency"  # the allocation that exists only under a latency table
LINEAR_ONLY = ("global",)  # allocations that need a constant price per unit


@dataclass(frozen=True)
class PlanConfig:
    """How to turn sensitivities into a plan.

    ``min_keep`` is the smallest fraction of each group's units any group keeps (rounded up to
    whole units). The default 0.0 lets a group go to zero units, as METHOD.md allows (a layer
    without heads skips attention, one without neurons skips its FFN); raise it (e.g. 0.1) to
    forbid that. ``round_to`` N makes every FFN width a multiple of N (or the dense width),
    which CPU matmul kernels prefer (8 or 16 for AVX2/NEON lanes); head counts are whole
    heads already, each a ``head_size``-wide block, so they are not rounded further.
    """

    allocation: str = "proportional"
    min_keep: float = 0.0
    round_to: int = 1
    cost_model: str = "flops"  # what prices a plan: FLOPs, or a device's measured latency table

    def __post_init__(self) -> None:
        if self.allocation == LATENCY:  # the latency allocation has no meaning without the table
            object.__setattr__(self, "cost_model", "latency")
        if self.cost_model not in COST_MODELS:
            raise InputError(f"--cost-model {self.cost_model!r} is not one of {', '.join(COST_MODELS)}; choose one")
        if self.cost_model == "latency" and self.allocation in LINEAR_ONLY:
            raise InputError(f"--allocation {self.allocation} ranks units by a fixed price per unit, which a "
                             "latency table does not have; with --cost-model latency choose latency or proportional")
        if not isinstance(self.min_keep, (int, float)) or not 0 <= self.min_keep <= 1:
            raise InputError(f"--min-keep {self.min_keep} is out of range; choose a fraction in [0, 1]")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise InputError(f"--round-to {self.round_to} is out of range; choose a whole number >= 1")
        get_allocation(self.allocation)  # an unknown name lists the registered ones

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Group:
    """One tensor group as the allocator sees it: allowed unit counts, cost per unit, score."""

    key: str
    layer: int
    kind: str
    size: int                       # dense unit count
    levels: tuple[int, ...]         # allowed unit counts, ascending; levels[0] is the minimum
    cost: tuple[int, int]           # (trimmable params, encoder FLOPs) of one unit
    score: float
    importance: tuple[float, ...]

    def level_of(self, units: int) -> int:
        return self.levels.index(units)


Allocation = Callable[[Sequence[Group], "Caps", PlanConfig], list[int]]
ALLOCATIONS: Registry[Allocation] = Registry("allocation")
register_allocation = ALLOCATIONS.register  # the value of --allocation
get_allocation = ALLOCATIONS.lookup


@dataclass(frozen=True)
class Caps:
    """The budget's caps (trimmable params, encoder FLOPs; None: no cap) and sums over unit counts,
    plus a latency cap for the ``latency`` allocation."""

    limits: tuple[int | None, int | None]
    latency: LatencyBudget | None = None

    def totals(self, groups: Sequence[Group], units: Sequence[float]) -> tuple[float, float]:
        return (sum(u * g.cost[0] for g, u in zip(groups, units)),
                sum(u * g.cost[1] for g, u in zip(groups, units)))

    def fits(self, totals: Sequence[float]) -> bool:
        return all(cap is None or total <= cap for cap, total in zip(self.limits, totals))

    def fits_units(self, groups: Sequence["Group"], units: Sequence[int]) -> bool:
        """Return True when unit counts meet every cap, the latency cap included."""
        latency_ok = self.latency is None or self.latency.total_ms(groups, units) <= self.latency.max_ms + 1e-9
        return latency_ok and self.fits(self.totals(groups, units))

    def weight(self, group: Group) -> float:
        """Return a unit's 'price': its cost as a fraction of each active cap, the largest of them."""
        return max(group.cost[i] / max(cap, 1) for i, cap in enumerate(self.limits) if cap is not None)


# ---------------------------------------------------------------- the verb

def allocate(sensitivity: Sensitivity, shape: EncoderShape, budget: Budget,
             config: PlanConfig | None = None, latency: LatencyBudget | None = None) -> Plan:
    """Return the plan that keeps the most units the budget allows, shared out by ``config.allocation``.

    The plan never exceeds any of the budget's caps, and no group could take one more unit
    (one more allowed step, under ``round_to``) without exceeding one: it is within one unit
    of the budget. Raises InfeasibleBudget below the smallest model ``min_keep`` allows and
    InputError above the dense model.

    Example:
        >>> plan = allocate(Sensitivity.load("sensitivity.json"), shape, budget_from_keep(shape, 0.5))
    """
    config = config or PlanConfig()
    allocation = get_allocation(config.allocation)
    if (config.cost_model == "latency") != (latency is not None):
        raise InputError("--cost-model latency (and --allocation latency) plans against a measured latency table "
                         "and only it does; pass a profile with a latency table (sensibert-deploy calibrate "
                         "--latency-table), or price the plan by FLOPs")
    _check_match(sensitivity, shape)
    groups = build_groups(sensitivity, shape, budget, config)
    if latency is not None:  # the table prices time; the FLOPs cap was only its stand-in
        caps = _latency_caps(groups, shape, budget, latency)
    else:
        caps = Caps((budget.max_trimmable_params, budget.max_encoder_flops))
        _check_feasible(groups, caps, config)
    units = allocation(groups, caps, config)
    if not caps.fits_units(groups, units):  # a bug, never an input problem
        raise RuntimeError(f"allocation {config.allocation!r} exceeded the budget")
    heads, ffn = layer_units(groups, units, shape.num_layers)
    kept = shape.with_units(heads, ffn)
    cost, binding, headroom = plan_cost(shape, kept, budget)
    if latency is not None:
        cost["predicted_latency_ms"] = round(latency.total_ms(groups, units), 4)
        cost["latency_model"] = latency.describe()
        binding = "latency"
    return Plan(model_hash=sensitivity.model_hash, architecture=architecture_of(shape), heads=tuple(heads),
                ffn=tuple(ffn), allocation=config.allocation, budget=budget.to_dict(), cost=cost,
                binding=binding, headroom=headroom, sensitivity_hash=sensitivity.content_hash(),
                settings=config.to_dict())


def check_latency_target(shape: EncoderShape, budget: Budget, latency: LatencyBudget,
                         config: PlanConfig | None = None, dense_side: bool = True) -> None:
    """Raise what ``allocate`` would raise for this latency cap (a table for another shape, a target
    no plan reaches or, with ``dense_side``, one the dense model already meets), from the shape
    alone: the units a plan may keep do not depend on the sensitivity, so ``run`` refuses such a
    target before any training."""
    _latency_caps(build_groups(None, shape, budget, config or PlanConfig()), shape, budget, latency, dense_side)


def _latency_caps(groups: Sequence[Group], shape: EncoderShape, budget: Budget, latency: LatencyBudget,
                  dense_side: bool = True) -> Caps:
    """Return the caps of a latency-priced plan once the table fits the shape and the target is reachable."""
    latency.table.check_shape(shape.hidden, shape.head_size, shape.heads, shape.ffn)
    caps = Caps((budget.max_trimmable_params, None), latency)
    _check_latency_feasible(groups, caps, dense_side)
    return caps


def build_groups(sensitivity: Sensitivity | None, shape: EncoderShape, budget: Budget,
                 config: PlanConfig) -> list[Group]:
    """Return the 2·L groups in layer order with their allowed unit counts and per-unit costs
    (``sensitivity`` None: scores and importance left empty, for checks that need only the units)."""
    unit_flops = {kind: costs.unit_flops(shape, kind, budget.batch, budget.seq_len) for kind in ("attn", "ffn")}
    # Ranking across groups divides importance by cost, so importance must add up over weights
    # as cost does: a squared L2 norm does (sum of w²), a norm does not (it would make every
    # head, with 2·d·H/1 times a neuron's weights, look sqrt(that) times too cheap to keep).
    additive = (lambda v: v * v) if sensitivity and sensitivity.importance_kind == "weight_norm" else float
    groups = []
    for layer in range(shape.num_layers):
        for kind, size in (("attn", shape.heads[layer]), ("ffn", shape.ffn[layer])):
            step = config.round_to if kind == "ffn" else 1
            allowed = sorted(set(range(0, size + 1, step)) | {size})
            smallest = math.ceil(config.min_keep * size - 1e-9)
            key = group_key(layer, kind)
            groups.append(Group(key=key, layer=layer, kind=kind, size=size,
                                levels=tuple(a for a in allowed if a >= smallest),
                                cost=(costs.unit_params(shape, kind), unit_flops[kind]),
                                score=float(sensitivity.scores[key]) if sensitivity else 0.0,
                                importance=tuple(additive(v) for v in sensitivity.importance[key])
                                if sensitivity else ()))
    return groups


def plan_cost(dense: EncoderShape, kept: EncoderShape, budget: Budget) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Return (cost record, binding cap, headroom per cap) of the kept shape under ``budget``.

    The binding cap is the one with the smaller headroom as a fraction of the cap ("params"
    or "flops"); "none" when the plan keeps the dense model.
    """
    batch, seq = budget.batch, budget.seq_len
    cost = {"trimmable_params": costs.trimmable_params(kept), "encoder_params": costs.encoder_params(kept),
            "total_params": costs.total_params(kept), "encoder_flops": costs.encoder_flops(kept, batch, seq),
            "total_flops": costs.total_flops(kept, batch, seq), "seq_len": seq, "batch": batch,
            "dense_trimmable_params": costs.trimmable_params(dense),
            "dense_total_params": costs.total_params(dense),
            "dense_encoder_flops": costs.encoder_flops(dense, batch, seq)}
    cost["keep_trimmable_params"] = cost["trimmable_params"] / max(cost["dense_trimmable_params"], 1)
    cost["keep_encoder_flops"] = cost["encoder_flops"] / max(cost["dense_encoder_flops"], 1)
    headroom = {}
    for name, cap, used in (("params", budget.max_trimmable_params, cost["trimmable_params"]),
                            ("flops", budget.max_encoder_flops, cost["encoder_flops"])):
        headroom[name] = {"cap": cap, "used": used, "headroom": None if cap is None else cap - used,
                          "headroom_fraction": None if cap is None else (cap - used) / max(cap, 1)}
    active = [n for n in CAPS if headroom[n]["cap"] is not None]
    if kept.heads == dense.heads and kept.ffn == dense.ffn:
        binding = "none"  # the budget allows the dense model: nothing binds
    else:
        binding = min(active, key=lambda n: (headroom[n]["headroom_fraction"], CAPS.index(n)))
    return cost, binding, headroom


def _check_match(sensitivity: Sensitivity, shape: EncoderShape) -> None:
    mine, theirs = sensitivity.shape, shape
    if (mine.heads, mine.ffn, mine.hidden, mine.head_size) != (theirs.heads, theirs.ffn, theirs.hidden,
                                                                theirs.head_size):
        raise InputError(f"the sensitivity was made for another architecture (heads {list(mine.heads)}, "
                         f"FFN {list(mine.ffn)}, hidden {mine.hidden}; this model: heads {list(theirs.heads)}, "
                         f"FFN {list(theirs.ffn)}, hidden {theirs.hidden}); run sensibert analyze on this model")


def _check_feasible(groups: Sequence[Group], caps: Caps, config: PlanConfig) -> None:
    """Raise unless the smallest allowed plan fits and the dense model does not already fit."""
    smallest = caps.totals(groups, [g.levels[0] for g in groups])
    dense = caps.totals(groups, [g.size for g in groups])
    names = ("trimmable parameters", "encoder FLOPs")
    for i, cap in enumerate(caps.limits):
        if cap is not None and smallest[i] > cap:
            raise InfeasibleBudget(
                f"the budget allows {cap:,} {names[i]} but the smallest model --min-keep {config.min_keep:g} "
                f"allows needs {int(smallest[i]):,}; raise the budget or lower --min-keep")
    if all(cap is None or dense[i] < cap for i, cap in enumerate(caps.limits)):
        seen = ", ".join(f"{cap:,} {names[i]} (dense {int(dense[i]):,})"
                         for i, cap in enumerate(caps.limits) if cap is not None)
        raise InputError(f"the budget is above the dense model ({seen}): nothing to trim; "
                         "lower the budget (e.g. --keep 0.5) or use the dense model as it is")


def _check_latency_feasible(groups: Sequence[Group], caps: Caps, dense_side: bool = True) -> None:
    """Raise InfeasibleBudget when even the smallest allowed plan misses the latency cap (naming
    the smallest latency any plan reaches), InputError when the dense model already meets it
    (unless not ``dense_side``)."""
    lat = caps.latency
    smallest = lat.total_ms(groups, [g.levels[0] for g in groups])
    if smallest > lat.max_ms:
        raise InfeasibleBudget(f"no model meets {lat.max_ms:g} ms at {lat.seq_len} tokens: the fixed cost and the "
                               f"smallest allowed sub-layers alone take {smallest:.3f} ms (the smallest achievable "
                               "latency); raise the latency target or lower --min-keep")
    dense = lat.total_ms(groups, [g.size for g in groups])
    if dense_side and dense <= lat.max_ms and caps.fits(caps.totals(groups, [g.size for g in groups])):
        raise InputError(f"the dense model already meets {lat.max_ms:g} ms ({dense:.3f} ms predicted at "
                         f"{lat.seq_len} tokens): nothing to trim; lower the latency target or use the dense model")


# ---------------------------------------------------------------- allocations

@register_allocation(LATENCY)
def latency_allocation(groups: Sequence[Group], caps: Caps, config: PlanConfig) -> list[int]:
    """Return units that keep the most importance under the latency cap (and the params cap).

    Greedy on measured prices: from the dense model, repeatedly take the cheapest move in
    importance lost per millisecond saved, where a group may step down one allowed count or drop
    to its smallest count at once; the second move saves the block's fixed cost, so a small
    block that costs nearly what a full one does is either kept wide or removed (and a layer
    whose two blocks are both empty is removed whole, saving its LayerNorms too). Then steps back
    up, best importance gained per millisecond, while everything still fits.
    """
    lat = caps.latency
    if lat is None:
        raise InputError("--allocation latency needs a latency table; pass a profile calibrated with "
                         "sensibert-deploy calibrate --latency-table")
    ranked = [sorted(g.importance, reverse=True) for g in groups]
    kept = [[0.0] + [sum(r[:u]) for u in range(1, len(r) + 1)] for r in ranked]  # kept importance by units
    prices = [[lat.block_ms(g, u) for u in g.levels] for g in groups]
    partner = [next((j for j, h in enumerate(groups) if h.layer == g.layer and j != i), None)
               for i, g in enumerate(groups)]
    params_cap = caps.limits[0]
    levels = [len(g.levels) - 1 for g in groups]
    total_ms = lat.total_ms(groups, [g.levels[i] for g, i in zip(groups, levels)])
    params = sum(g.levels[i] * g.cost[0] for g, i in zip(groups, levels))

    def fits(ms: float, n: int) -> bool:
        return ms <= lat.max_ms + 1e-9 and (params_cap is None or n <= params_cap)

    def layer_ms(gi: int, level: int) -> float:
        """Return the time of group ``gi``'s layer with the group at ``level``: nothing once both
        of its sub-layers are empty (a removed layer, ``deploy.latency_table.layer_removed``)."""
        pj = partner[gi]
        if pj is None:
            return prices[gi][level]
        if layer_removed(groups[gi].levels[level], groups[pj].levels[levels[pj]]):
            return 0.0
        return prices[gi][level] + prices[pj][levels[pj]]

    def delta(gi: int, to: int) -> float:
        return layer_ms(gi, to) - layer_ms(gi, levels[gi])

    def move(gi: int, to: int) -> None:
        nonlocal total_ms, params
        group = groups[gi]
        total_ms += delta(gi, to)
        params += (group.levels[to] - group.levels[levels[gi]]) * group.cost[0]
        levels[gi] = to

    while not fits(total_ms, params):
        best = None
        for gi, group in enumerate(groups):
            here = levels[gi]
            for to in sorted({here - 1, 0}) if here > 0 else ():
                saved = -delta(gi, to)
                if saved <= 0 and (params_cap is None or params <= params_cap):
                    continue
                lost = kept[gi][group.levels[here]] - kept[gi][group.levels[to]]
                key = (lost / saved if saved > 0 else math.inf, -saved, gi, to)
                if best is None or key < best[0]:
                    best = (key, gi, to)
        if best is None:  # _check_latency_feasible rules this out
            raise InfeasibleBudget("no allocation meets the latency cap; raise it")
        move(best[1], best[2])
    while True:  # spend what is left, best importance per millisecond first
        best = None
        for gi, group in enumerate(groups):
            here = levels[gi]
            targets = range(here + 1, len(group.levels)) if here == 0 else (here + 1,) if here + 1 < len(group.levels) else ()
            for to in targets:
                added = delta(gi, to)
                extra = (group.levels[to] - group.levels[here]) * group.cost[0]
                if not fits(total_ms + added, params + extra):
                    continue
                gained = kept[gi][group.levels[to]] - kept[gi][group.levels[here]]
                key = (-(gained / added) if added > 0 else -math.inf, gi, to)
                if best is None or key < best[0]:
                    best = (key, gi, to)
        if best is None:
            break
        move(best[1], best[2])
    return [g.levels[i] for g, i in zip(groups, levels)]


@register_allocation("proportional")
def proportional(groups: Sequence[Group], caps: Caps, config: PlanConfig) -> list[int]:
    """Return units with keep ratio r_g = clip(r·s_g/mean(s), min_keep, 1), r found by bisection."""
    scores = [g.score for g in groups]
    mean = sum(scores) / len(scores)
    if mean <= 0:  # no signal at all: every group equally sensitive
        scores, mean = [1.0] * len(groups), 1.0
    relative = [s / mean for s in scores]
    return _round_and_fill(groups, caps, _bisect_targets(groups, caps, relative))


BALANCE_EXPONENT = 0.5  # gamma of "balanced": keep ratios follow score^gamma


@register_allocation("balanced")
def balanced(groups: Sequence[Group], caps: Caps, config: PlanConfig) -> list[int]:
    """Return units with keep ratio r_g = clip(r·(s_g/ŝ)^γ, min_keep, 1), γ = 0.5, ŝ the geometric mean.

    Proportional allocation on Fisher scores collapses: scores per parameter span two orders
    of magnitude across layers, so low-score groups fall to a few units while one layer keeps
    everything. Tempering by γ < 1 keeps the ranking (a higher score never keeps a smaller
    share) but compresses the range, and ratios to the geometric mean make one outlier score
    unable to drag every other group down. Guarantee (before rounding): for any groups g, h,
    keep_g ≥ (s_g/s_h)^γ · keep_h — no group gets less than its score warrants relative to any
    other. Zero scores are lifted to the smallest positive one (a zero Fisher estimate on a
    few batches is noise, not proof that a group is useless).
    """
    positive = [g.score for g in groups if g.score > 0]
    if not positive:
        return uniform(groups, caps, config)
    floor = min(positive)
    logs = [math.log(max(g.score, floor)) for g in groups]
    centre = sum(logs) / len(logs)
    relative = [math.exp(BALANCE_EXPONENT * (x - centre)) for x in logs]
    return _round_and_fill(groups, caps, _bisect_targets(groups, caps, relative))


@register_allocation("uniform")
def uniform(groups: Sequence[Group], caps: Caps, config: PlanConfig) -> list[int]:
    """Return units with the same keep ratio in every group (the baseline that ignores sensitivity)."""
    return _round_and_fill(groups, caps, _bisect_targets(groups, caps, [1.0] * len(groups)))


@register_allocation("global")
def global_ranking(groups: Sequence[Group], caps: Caps, config: PlanConfig) -> list[int]:
    """Return units chosen by one ranking of all units by importance per cost, best first, until the budget is spent.

    Each group first keeps its ``min_keep`` units. Within a group units are taken in order of
    importance, in steps of the allowed counts (``round_to``): a step's value is its units'
    mean importance per unit price. A group whose next step does not fit is closed.
    """
    steps = []
    for gi, group in enumerate(groups):
        ranked = sorted(group.importance, reverse=True)
        price = caps.weight(group)
        previous = math.inf
        for li in range(1, len(group.levels)):
            lo, hi = group.levels[li - 1], group.levels[li]
            value = sum(ranked[lo:hi]) / (hi - lo) / price if price > 0 else math.inf
            previous = min(previous, value)  # non-increasing within a group, whatever the float sums do
            steps.append((-previous, gi, li))
    units = [g.levels[0] for g in groups]
    totals = list(caps.totals(groups, units))
    closed = set()
    for _, gi, li in sorted(steps):
        group = groups[gi]
        if gi in closed:
            continue
        extra = group.levels[li] - units[gi]
        trial = [t + extra * c for t, c in zip(totals, group.cost)]
        if caps.fits(trial):
            units[gi], totals = group.levels[li], trial
        else:
            closed.add(gi)
    return units


def _bisect_targets(groups: Sequence[Group], caps: Caps, relative: Sequence[float]) -> list[float]:
    """Return continuous unit targets clip(r·rel_g, min_keep, 1)·size_g for the largest r that fits.

    The floor is the group's smallest allowed count (min_keep rounded up to a whole unit),
    so that rounding does not push the plan over the budget by design.
    """
    def targets(r: float) -> list[float]:
        return [min(float(g.size), max(float(g.levels[0]), r * rel * g.size)) for g, rel in zip(groups, relative)]

    positive = [rel for rel in relative if rel > 0]
    hi = 1.0 / min(positive) if positive else 1.0   # at r = hi every group with a signal is full
    if caps.fits_units(groups, targets(hi)):
        return targets(hi)
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if caps.fits_units(groups, targets(mid)):
            lo = mid
        else:
            hi = mid
    return targets(lo)


def _round_and_fill(groups: Sequence[Group], caps: Caps, targets: Sequence[float]) -> list[int]:
    """Return allowed unit counts near ``targets`` that fit, and to which no group can add a step.

    Round each group to its nearest allowed count; while over budget, step down the group
    furthest above its target (as a fraction of its size); then, while any group's next step
    fits, step up the fitting group furthest below its target. Ties go to the earlier group.
    """
    units = [min(g.levels, key=lambda a: (abs(a - t), a)) for g, t in zip(groups, targets)]

    def deviation(i: int) -> float:
        return (units[i] - targets[i]) / max(groups[i].size, 1)

    while not caps.fits_units(groups, units):
        lowerable = [i for i, g in enumerate(groups) if units[i] > g.levels[0]]
        i = max(lowerable, key=lambda j: (deviation(j), -j))
        units[i] = groups[i].levels[groups[i].level_of(units[i]) - 1]
    while True:
        best, best_key = None, None
        for i, g in enumerate(groups):
            if units[i] == g.size:
                continue
            new = g.levels[g.level_of(units[i]) + 1]
            trial = units[:i] + [new] + units[i + 1:]
            if (best is None or (-deviation(i), -i) > best_key) and caps.fits_units(groups, trial):
                best, best_key = (i, new), (-deviation(i), -i)
        if best is None:
            return units
        units[best[0]] = best[1]
