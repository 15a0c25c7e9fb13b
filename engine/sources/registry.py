"""Source kind -> Source class. Each source module registers itself."""

from __future__ import annotations

from engine.sources.base import Source

SOURCES: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    SOURCES[cls.kind] = cls
    return cls
