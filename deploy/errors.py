"""One error hierarchy for toolchain and deploy: the CLIs print the message on one line and exit 2."""

from __future__ import annotations


class SensibertError(Exception):
    """Base class: a problem the user can fix; the message names the value seen and the fix."""


class InputError(SensibertError):
    """Bad input: a file, a flag or a value the tool cannot use."""


class InfeasibleBudget(SensibertError):
    """The budget cannot be met (device too small, or budget outside the model's range)."""


class ParityError(SensibertError):
    """An artifact does not compute what its source computes."""


class DeployError(SensibertError):
    """The on-device runner could not load, run or verify an artifact."""
