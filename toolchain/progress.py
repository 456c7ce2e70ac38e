"""One progress bar per long stage, with an ETA: the console's only moving part besides our lines.

A Hugging Face Trainer (fine-tuning, the density analysis) gets ``one_bar``: its own training bar
without the evaluation bars and printed dicts. Every other long loop uses one of these: batches
(analysis, scoring the ONNX models, measuring them, least squares), a few unequal named steps
(export), or a callback from a loop that lives in deploy/ (which has no tqdm).
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Iterator, Sequence


def one_bar(trainer: Any, metric: str | None = None) -> None:
    """Give ``trainer`` one bar with an ETA and the latest loss (and ``metric``), in place of the
    Trainer's bars and printed log dictionaries."""
    from transformers import ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_one_bar_class()(metric or ""))


@functools.cache
def _one_bar_class() -> type:
    """Return the Trainer callback of ``one_bar`` (built on first use: transformers loads lazily)."""
    from transformers import ProgressCallback

    class OneBar(ProgressCallback):
        """The Trainer's training bar (ETA included) without its evaluation bars and printed log
        dicts: the loss and the dev score go into the bar's postfix instead."""

        def __init__(self, metric: str) -> None:
            super().__init__()
            self.metric = metric

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            return

        def on_evaluate(self, args, state, control, **kwargs):
            return

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            if state.is_world_process_zero and getattr(self, "training_bar", None) is not None and logs:
                shown = {k: round(v, 4) for k, v in logs.items() if k in ("loss", f"eval_{self.metric}")}
                if shown:
                    self.training_bar.set_postfix(shown, refresh=False)

    return OneBar


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
