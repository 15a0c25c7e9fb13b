"""Running a worker as a process: event loop (uvloop when available),
signals (SIGTERM/SIGINT: graceful stop; SIGHUP: reload the rule files),
status reporting."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
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


def cli_config_paths(argv: Sequence[str] | None = None) -> list[str] | None:
    """The rule files of an `engine run FILE...` command line, else None.
    (A fallback for callers that do not pass `config_paths` to `serve`.)"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "run":
        return None
    from engine.cli import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        return None
    files = getattr(args, "files", None)
    return list(files) if files else None


async def serve(worker: Worker, status: StatusReporter | None = None, *,
                config_paths: Sequence[str] | None = None) -> None:
    """Run `worker` until its sources end or SIGTERM/SIGINT (graceful drain;
    a second signal gives up on draining). With the rule files known
    (`config_paths`, or the `engine run` command line), SIGHUP and changes of
    those files reload the rules (see `Worker.reload`)."""
    loop = asyncio.get_running_loop()
    if worker.reloader is None and worker.config is not None:
        paths = list(config_paths) if config_paths is not None else cli_config_paths()
        if paths:
            worker.enable_file_reload(paths)
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
