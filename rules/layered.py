"""A keyed map of one user seen through one step (pure Python, no pyflink): the stored base plus
the step's changes. The core's state (rules/ledger.py) holds four of them; the owner of the bases
(the Flink operator's store, or `rules.simulate`) writes the changes through after the step.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

DELETED: Any = object()


class MapBase(Protocol):
    """Read side of one keyed map of one user: a dict, or the job's Flink MapState."""

    def get(self, key: str) -> Any: ...


class Layered:
    """A keyed map seen through one step: the stored base plus this step's changes. Setting a
    key copies only the changes, never the base, so a step costs O(its changes)."""

    __slots__ = ("base", "changes")

    def __init__(self, base: MapBase | None = None, changes: dict[str, Any] | None = None):
        self.base = {} if base is None else base
        self.changes = {} if changes is None else changes

    def get(self, key: str) -> Any:
        if key in self.changes:
            value = self.changes[key]
            return None if value is DELETED else value
        return self.base.get(key)

    def __contains__(self, key: str) -> bool:
        changes = self.changes  # get() inlined: asked once per alert (is this id a retry?)
        if key in changes:
            return changes[key] is not DELETED and changes[key] is not None
        return self.base.get(key) is not None

    def set(self, key: str, value: Any) -> Layered:
        return Layered(self.base, {**self.changes, key: value})

    def delete(self, key: str) -> Layered:
        return Layered(self.base, {**self.changes, key: DELETED})

    def as_dict(self) -> dict[str, Any]:
        """Every entry; only for dict bases (tests, simulate): the job never enumerates a map."""
        if not isinstance(self.base, Mapping):
            raise TypeError("only a dict-based map can be listed")
        merged = dict(self.base)
        for key, value in self.changes.items():
            if value is DELETED:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __eq__(self, other) -> bool:
        return isinstance(other, Layered) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return f"Layered({len(self.changes)} changes)"
