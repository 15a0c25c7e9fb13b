"""Running a worker as a process: event loop (uvloop when available),
signals, status reporting."""

from __future__ import annotations

import asyncio
import logging
import signal

from engine.runtime.status import StatusReporter
from engine.runtime.worker import Worker

log = logging.getLogger(__name__)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_sync(coro):
    """asyncio.run on uvloop when it is installed."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


async def serve(worker: Worker, status: StatusReporter | None = None) -> None:
    """Run `worker` until its sources end or SIGTERM/SIGINT (graceful drain;
    a second signal gives up on draining)."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if worker.stopping:
            log.warning("%s again: not waiting for the drain", sig.name)
            worker.abort()
        else:
            log.info("%s received", sig.name)
            worker.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    reporter = asyncio.create_task(status.run()) if status is not None else None
    try:
        await worker.run()
    finally:
        if reporter is not None:
            reporter.cancel()
            try:
                await reporter
            except asyncio.CancelledError:
                pass
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
