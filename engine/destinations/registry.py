"""Channel name -> Sink class. Each destination module registers itself."""

from __future__ import annotations

from engine.destinations.base import Sink

CHANNELS: dict[str, type[Sink]] = {}


def register(cls: type[Sink]) -> type[Sink]:
    CHANNELS[cls.channel] = cls
    return cls
