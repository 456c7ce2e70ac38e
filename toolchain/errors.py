"""The toolchain's errors are the deploy package's errors: one hierarchy for both CLIs."""

from deploy.errors import DeployError, InfeasibleBudget, InputError, ParityError, SensibertError

__all__ = ["DeployError", "InfeasibleBudget", "InputError", "ParityError", "SensibertError"]
