"""Named registries (sensitivity scorers, allocations, unit importances): one mechanism for all.

A registry is a dict filled by a decorator that returns the function unchanged; a failed
lookup is an InputError that lists the choices.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from toolchain.errors import InputError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """Name → handler, with ``register`` (decorator) and ``lookup`` (lists choices when missing)."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that files the handler under ``name``."""
        def wrap(fn: T) -> T:
            self[name] = fn
            return fn
        return wrap

    def lookup(self, name: str) -> T:
        """Return the handler called ``name``; an unknown name lists the choices."""
        if name not in self:
            raise InputError(f"unknown {self.what} {name!r}; choose one of: {', '.join(sorted(self))}")
        return self[name]
