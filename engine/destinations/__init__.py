"""Destinations: one module per channel, each implementing `base.Sink`.

Importing this package registers every channel in `CHANNELS`
(channel name -> Sink class; `Sink.Config` is the channel_detail model)."""

from engine.destinations import amqp, http, influxdb, kafka, mysql, postgresql  # noqa: F401
from engine.destinations.base import Failure, Record, Sink, SinkError, WriteResult
from engine.destinations.registry import CHANNELS, register

__all__ = ["CHANNELS", "Failure", "Record", "Sink", "SinkError", "WriteResult", "register"]
