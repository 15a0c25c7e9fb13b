"""What a running worker tells its operator.

On a terminal: one status line, rewritten every second (events/s in,
matched/s, forwarded/s, in-flight records, durable backlog, dead letters). Otherwise: a plain log line
every `interval` seconds. Problems are logged by the parts that see them, one
line per problem (never one per event).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from engine.runtime.metrics import LiveTotals, Totals, snapshot

log = logging.getLogger("engine.status")


# Context a log call passes as `extra={...}`: fields of their own in JSON
# lines (searchable, not parsed out of the text), `key=value` after the
# message in text lines.
FIELDS = ("rule_id", "action_id", "source", "reason")


class _Live:
    """The status line currently shown on a terminal, so that a log line
    written meanwhile clears it first and redraws it after (no interleaving)."""

    line: str | None = None
    stream: TextIO | None = None


LIVE = _Live()


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = StatusAwareHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # chatty about group joins


def utc_timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds and an explicit offset:
    2026-11-22T00:55:25.123+00:00."""
    stamp = datetime.fromtimestamp(created, tz=UTC)
    return stamp.isoformat(timespec="milliseconds")


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k in FIELDS if (v := getattr(record, k, None)) is not None}


class TextFormatter(logging.Formatter):
    """`TIME LEVEL logger: message key=value ...`"""

    def format(self, record: logging.LogRecord) -> str:
        text = (f"{utc_timestamp(record.created)} {record.levelname} {record.name}: "
                f"{record.getMessage()}")
        for key, value in _fields(record).items():
            value = str(value)
            text += f" {key}={json.dumps(value) if not value or ' ' in value else value}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context
    fields given (rule_id, action_id, source, reason) and an exception."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": utc_timestamp(record.created), "level": record.levelname,
               "logger": record.name, "message": record.getMessage(), **_fields(record)}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class StatusAwareHandler(logging.StreamHandler):
    """Clears a live status line on the same terminal before a log line and
    redraws it after."""

    def emit(self, record: logging.LogRecord) -> None:
        live = LIVE.line if LIVE.stream is self.stream else None
        if live is None:
            super().emit(record)
            return
        self.acquire()
        try:
            self.stream.write("\r\x1b[K")
            super().emit(record)
            self.stream.write(live)
            self.flush()
        finally:
            self.release()


def _rate(n: float) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else f"{n:.0f}"


class StatusReporter:
    def __init__(self, totals: Totals | LiveTotals, *, tty: bool | None = None,
                 interval: float = 10.0, stream: TextIO = sys.stderr,
                 extra: Callable[[], str] | None = None) -> None:
        """`totals`: read every interval (`Metrics.totals`, or a `Totals` a
        test changes)."""
        self.totals = totals
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = 1.0 if self.tty else interval
        self.extra = extra  # e.g. replay progress

    def line(self, prev: Totals, now: Totals, dt: float) -> str:
        text = (f"in {_rate((now.received - prev.received) / dt)}/s  "
                f"matched {_rate((now.matched - prev.matched) / dt)}/s  "
                f"forwarded {_rate((now.forwarded - prev.forwarded) / dt)}/s  "
                f"in-flight {now.inflight}  backlog {now.backlogged}  "
                f"dead-lettered {now.dead_lettered}  "
                f"total in {now.received}")
        return f"{self.extra()}  {text}" if self.extra else text

    async def run(self) -> None:
        prev, t_prev = snapshot(self.totals), time.monotonic()
        try:
            while True:
                await asyncio.sleep(self.interval)
                now, t_now = snapshot(self.totals), time.monotonic()
                text = self.line(prev, now, max(t_now - t_prev, 1e-9))
                if self.tty:
                    self.stream.write("\r\x1b[K" + text)
                    self.stream.flush()
                    LIVE.line, LIVE.stream = text, self.stream
                else:
                    log.info(text)
                prev, t_prev = now, t_now
        finally:
            if self.tty:
                LIVE.line = LIVE.stream = None
                self.stream.write("\r\x1b[K")
                self.stream.flush()
