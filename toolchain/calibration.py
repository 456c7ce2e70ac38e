"""Which training inputs calibrate an int8 file (static ranges, mixed precision's probes).

A registered choice (``--calibration-selection``). ``first`` takes the first inputs as given
(``run`` passes its training split in a seeded order). ``length-spread`` takes them at evenly
spaced quantiles of token length from a larger pool: a static range is the largest activation
calibration saw, and long inputs (more tokens, more chances of a loud one) and short ones (the
[CLS]-heavy attention of a few tokens) both reach the deployed file, so both should set it.
Pure functions over token lengths; the export tokenises.
"""

from __future__ import annotations

from typing import Callable, Sequence

from toolchain.registry import Registry

POOL_FACTOR = 8  # length-spread chooses from this many times the inputs it keeps

Selection = Callable[[Sequence[int], int], list[int]]
SELECTIONS: Registry[Selection] = Registry("calibration selection")
DEFAULT_SELECTION = "first"


@SELECTIONS.register("first")
def first(lengths: Sequence[int], n: int) -> list[int]:
    """Return the first ``n`` indices: the inputs as given."""
    return list(range(min(n, len(lengths))))


@SELECTIONS.register("length-spread")
def length_spread(lengths: Sequence[int], n: int) -> list[int]:
    """Return ``n`` indices at evenly spaced quantiles of length (shortest and longest included),
    in the pool's own order, so any prefix of them (the probes take one) is as mixed as the pool."""
    if n >= len(lengths):
        return list(range(len(lengths)))
    by_length = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    step = (len(lengths) - 1) / max(n - 1, 1)
    return sorted({by_length[round(k * step)] for k in range(n)})


def pool_size(selection: str, n: int) -> int:
    """Return how many inputs ``selection`` looks at to keep ``n``: the first ``n``, or for a
    selection that chooses among them, ``POOL_FACTOR`` times as many."""
    return n if SELECTIONS.lookup(selection) is first else n * POOL_FACTOR


def select(selection: str, lengths: Sequence[int], n: int) -> list[int]:
    """Return the indices (into ``lengths``, the pool) of the ``n`` calibration inputs."""
    return SELECTIONS.lookup(selection)(lengths, n)
