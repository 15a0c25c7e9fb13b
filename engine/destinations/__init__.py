"""Destinations: one module per channel, each implementing `base.Sink`."""

from engine.destinations.base import Failure, Record, Sink, SinkError, WriteResult
from engine.destinations.registry import CHANNELS, register

__all__ = ["CHANNELS", "Failure", "Record", "Sink", "SinkError", "WriteResult", "register"]
