"""Running a worker as a process: event loop (uvloop when available),
signals (SIGTERM/SIGINT: graceful stop; SIGHUP: reload the rule files),
status reporting. Used by every command that runs a worker (`engine run`,
`replay`, `demo`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

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


async def serve(worker: Worker, status: StatusReporter | None = None, *,
                config_paths: Sequence[str] | None = None) -> None:
    """Run `worker` until its sources end or SIGTERM/SIGINT (graceful drain;
    a second signal gives up on draining). With the rule files known
    (`config_paths`, or given to `Worker.from_config`), SIGHUP and changes of
    those files reload the rules (see `Worker.reload`)."""
    loop = asyncio.get_running_loop()
    if worker.reloader is None and worker.config is not None and config_paths:
        worker.enable_file_reload(list(config_paths))
    reloader = worker.reloader

    def on_signal(sig: signal.Signals) -> None:
        if worker.stopping:
            log.warning("%s again: not waiting for the drain", sig.name)
            worker.abort()
        else:
            log.info("%s received", sig.name)
            worker.stop()

    signals = [signal.SIGTERM, signal.SIGINT]
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    if reloader is not None and reloader.paths:
        loop.add_signal_handler(signal.SIGHUP, reloader.request, "SIGHUP")
        signals.append(signal.SIGHUP)
        if reloader.interval > 0:
            log.info("watching %s for changes (every %gs; SIGHUP reloads too)",
                     ", ".join(reloader.paths), reloader.interval)
    reporter = asyncio.create_task(status.run()) if status is not None else None
    try:
        await worker.run(freeze_gc=True)  # a process of its own: see Worker.run
    finally:
        if reporter is not None:
            reporter.cancel()
            try:
                await reporter
            except asyncio.CancelledError:
                pass
        for sig in signals:
            loop.remove_signal_handler(sig)
