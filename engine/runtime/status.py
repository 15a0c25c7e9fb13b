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
from typing import TextIO

from engine.runtime.metrics import Totals

log = logging.getLogger("engine.status")


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # chatty about group joins


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _rate(n: float) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else f"{n:.0f}"


class StatusReporter:
    def __init__(self, totals: Totals, *, tty: bool | None = None, interval: float = 10.0,
                 stream: TextIO = sys.stderr, extra: Callable[[], str] | None = None) -> None:
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
        prev, t_prev = Totals(**vars(self.totals)), time.monotonic()
        try:
            while True:
                await asyncio.sleep(self.interval)
                now, t_now = Totals(**vars(self.totals)), time.monotonic()
                text = self.line(prev, now, max(t_now - t_prev, 1e-9))
                if self.tty:
                    self.stream.write("\r\x1b[K" + text)
                    self.stream.flush()
                else:
                    log.info(text)
                prev, t_prev = now, t_now
        finally:
            if self.tty:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
