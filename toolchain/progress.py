"""One progress bar per long stage, with an ETA: the console's only moving part besides our lines.

The fine-tuning bar is the Trainer's (one_bar in finetune.py); every other long loop uses one of
these: batches (analysis, scoring the ONNX models, measuring them, least squares), a few unequal
named steps (export), or a callback from a loop that lives in deploy/ (which has no tqdm).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence


class StepBar:
    """A bar over a stage's named steps: ``step()`` ends the current step and names the next
    (a context manager, so that the bar is cleared on errors too)."""

    def __init__(self, desc: str, steps: Sequence[str], enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.names, self.done = list(steps), 0
        self.bar = tqdm(total=len(self.names), desc=desc, unit="step", leave=False, disable=not enabled)
        self.bar.set_postfix_str(self.names[0] if self.names else "")

    def step(self) -> None:
        self.done += 1
        self.bar.update()
        if self.done < len(self.names):
            self.bar.set_postfix_str(self.names[self.done])

    def __enter__(self) -> StepBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()


def batches_bar(items: Iterable[Any], desc: str, total: int | None = None, unit: str = "batch",
                enabled: bool = True) -> Iterator[Any]:
    """Yield ``items`` under one bar (cleared when done)."""
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False, disable=not enabled)


class CountBar:
    """A bar fed by a callback ``(done, total)``, for loops that live in deploy/ (which has no tqdm);
    a context manager like StepBar."""

    def __init__(self, desc: str, unit: str = "batch", enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(desc=desc, unit=unit, leave=False, disable=not enabled)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> CountBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()
