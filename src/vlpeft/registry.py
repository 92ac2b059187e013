"""Name registries for methods and datasets.

``import vlpeft`` fills them: each module registers what it defines, so discovery never
depends on which modules a user's script happened to import. Lookups ignore case and
punctuation (``oxford_pets`` finds ``OxfordPets``); unknown names get the closest match and
the list of valid choices; registering a name twice is refused.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from vlpeft.errors import UnknownNameError

T = TypeVar("T")


def normalize_name(name: str) -> str:
    """Lower-case ``name`` and drop everything but letters and digits; a "+" counts as "p", so
    ``plot++`` (also found as ``plotpp``) stays apart from ``plot``."""
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("+", "p"))


def closest_name(name: str, choices: list[str]) -> str | None:
    """The choice most similar to ``name`` (case- and punctuation-insensitive), if any is close."""
    keys = {normalize_name(c): c for c in choices}
    match = difflib.get_close_matches(normalize_name(name), list(keys), n=1, cutoff=0.5)
    return keys[match[0]] if match else None


def unknown_name_message(kind: str, name: str, choices: list[str]) -> str:
    """``Unknown dataset 'x'. Did you mean 'y'? Available: [...]``."""
    hint = closest_name(name, choices)
    guess = f" Did you mean '{hint}'?" if hint else ""
    return f"Unknown {kind} '{name}'.{guess} Available: {sorted(choices)}"


class Registry(Generic[T]):
    """A mapping from canonical names (plus aliases) to registered objects."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._keys: dict[str, str] = {}  # normalised name or alias -> canonical name

    def register(self, name: str, obj: T, aliases: tuple[str, ...] = ()) -> T:
        """Add ``obj`` under ``name`` (and ``aliases``); a name already taken is refused."""
        for key in (name, *aliases):
            taken = self._keys.get(normalize_name(key))
            if taken is not None:
                raise ValueError(
                    f"Cannot register {self.kind} '{name}': the name '{key}' is already taken by "
                    f"'{taken}'. Choose a different name."
                )
        self._items[name] = obj
        for key in (name, *aliases):
            self._keys[normalize_name(key)] = name
        return obj

    def decorator(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """``@registry.decorator("name")`` form of :meth:`register`."""
        return lambda obj: self.register(name, obj, aliases)

    def canonical(self, name: str) -> str:
        """The canonical spelling of ``name``; unknown names raise with the closest match."""
        key = self._keys.get(normalize_name(name))
        if key is None:
            raise UnknownNameError(unknown_name_message(self.kind, name, self.names()))
        return key

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
