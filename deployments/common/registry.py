"""One way to register things by name: TTS engines, lip-sync models, feature extractors.

Entries name their code as `"package.module:attribute"` strings, imported only when chosen, so
picking one engine never imports another's heavy dependencies (torch, onnxruntime, aiohttp).
LiveTalking's names are accepted as aliases.

    TTS_ENGINES = LazyRegistry("tts engine", {"piper": "deployments.tts.piper_engine:PiperEngine"},
                               aliases={"edgetts": "edge"})
    engine_cls = TTS_ENGINES.load("piper")
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Canonical name -> entry, plus aliases; unknown names fail with the accepted ones listed.

    Args:
        what: What the entries are, for error messages ("lip-sync model").
        entries: Canonical name -> entry, in the order they should be listed.
        aliases: Other accepted names -> canonical name.
    """

    def __init__(self, what: str, entries: Mapping[str, T], *, aliases: Mapping[str, str] | None = None) -> None:
        self.what = what
        self._entries = dict(entries)
        self._aliases = dict(aliases or {})
        dangling = {a: n for a, n in self._aliases.items() if n not in self._entries}
        if dangling:
            raise ValueError(f"{what} aliases point at unknown names: {dangling}")

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical names, in registration order."""
        return tuple(self._entries)

    @property
    def aliases(self) -> dict[str, str]:
        """Alias -> canonical name."""
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def canonical(self, name: str) -> str:
        """`name` itself, or the name its alias stands for.

        Raises:
            ValueError: Unknown name; the message lists the accepted ones.
        """
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        accepted = ", ".join([*self._entries, *(f"{a} (= {n})" for a, n in self._aliases.items())])
        raise ValueError(f"unknown {self.what} {name!r}: choose one of {accepted}")

    def get(self, name: str) -> T:
        """The entry of `name` or its alias (see `canonical` for the error)."""
        return self._entries[self.canonical(name)]


class LazyRegistry(Registry[str]):
    """A registry whose entries are `"module:attribute"` paths, imported by `load`."""

    def load(self, name: str) -> Any:
        """The attribute registered as `name`, imported now."""
        return import_path(self.get(name))


def import_path(path: str) -> Any:
    """The attribute named by `"package.module:attribute"` (imports the module)."""
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
