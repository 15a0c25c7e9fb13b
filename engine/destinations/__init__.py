"""Destinations: one module per channel, each implementing `base.Sink`.

Importing this package registers every channel in `CHANNELS` (channel name ->
Sink class; `Sink.Config` is the channel_detail model). A new destination is
one module here with `@register`, plus its name in the import below."""

from engine.destinations import (  # noqa: F401 - each module registers its channel
    amqp,
    http,
    influxdb,
    jsonl_file,
    kafka,
    mqtt,
    mysql,
    postgresql,
)
from engine.destinations.base import Failure, Record, Sink, SinkError, WriteResult
from engine.destinations.registry import CHANNELS, register

__all__ = ["CHANNELS", "Failure", "Record", "Sink", "SinkError", "WriteResult", "register"]
