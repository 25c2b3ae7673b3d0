"""One registry mechanism for labelers, datasets, architectures and methods."""

from __future__ import annotations

import inspect
from typing import Callable, Generic, TypeVar

from stages.errors import ChddlError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Named factories of one kind, filled with the :meth:`register` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``fn`` under ``name``; names are unique per registry."""

        def add(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = fn
            return fn

        return add

    def get(self, name: str) -> T:
        """The factory called ``name``, or a ChddlError listing the valid names."""
        try:
            return self._entries[name]
        except KeyError:
            raise ChddlError(f"unknown {self.kind} '{name}'; valid: {', '.join(self.names())}") from None

    def create(self, name: str, *args, **kwargs):
        """Call the factory called ``name`` with the given arguments; an argument
        it does not take is refused (a ChddlError naming it), never swallowed."""
        fn = self.get(name)
        try:
            inspect.signature(fn).bind(*args, **kwargs)
        except TypeError as exc:
            raise ChddlError(f"{self.kind} '{name}' cannot be built with these arguments: {exc}") from None
        return fn(*args, **kwargs)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
