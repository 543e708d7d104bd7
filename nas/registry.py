"""Name -> object registries (the BasicSR/fvcore pattern).

Example:
    >>> from nas.registry import Registry
    >>> OPS = Registry("operator")
    >>> @OPS.register()
    ... class Foo: ...
    >>> OPS.get("Foo") is Foo
    True
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator

from nas.errors import UsageError


class Registry:
    """A mapping from names to classes or factory functions.

    Args:
        kind: what the registry holds, used in error messages ("operator", "backbone", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        """Decorator registering an object under ``name`` (default: its ``__name__``).

        Raises:
            KeyError: if the name is already taken.
        """

        def deco(obj: Any) -> Any:
            key = name or obj.__name__
            if key in self._items:
                raise KeyError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        """Return the object registered as ``name``.

        Raises:
            UsageError: unknown name (the message lists the known names and a close match).
        """
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(
                f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self._items))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def keys(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)
