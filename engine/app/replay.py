"""`engine replay FILE --rules RULES.yaml`: push an NDJSON file (or stdin)
through the rules and actions of a rule file, with progress and a summary
table. The rule file's sources and metrics endpoint are not used.

The durable backlog of `worker.state_dir` is the worker's: what an earlier
run or replay left there is delivered first, and once the file is read the
replay waits for the backlog to drain (giving up after
`worker.shutdown_timeout` seconds without progress). The summary counts
both, and `print_summary` returns what is left (the command then exits 1)."""

from __future__ import annotations

import os
import sys
import time

from engine.app.main import serve
from engine.app.supervisor import stranded_backlogs
from engine.config import EngineConfig
from engine.runtime.status import StatusReporter
from engine.runtime.worker import Worker, WorkerOptions
from engine.sources.file import FileSource


async def run_replay(path: str, config: EngineConfig, *, dry_run: bool = False,
                     tty: bool | None = None) -> Worker:
    source = FileSource(path, batch_size=config.worker.batch_size, name="replay")
    # A finite run: deliver the backlog too, don't leave it for later.
    # One process: it also takes over what `engine run --workers` left in
    # the workers' state directories (see stranded_backlogs).
    adopt = () if dry_run else stranded_backlogs(config.worker.state_dir, None, 1)
    worker = Worker.from_config(config, sources=[source], options=WorkerOptions(
        deliver=not dry_run, serve_metrics=False, drain_backlog_at_end=True,
        adopt_backlogs=adopt))
    size = os.path.getsize(path) if path != "-" and os.path.isfile(path) else None
    t0 = time.monotonic()

    def progress() -> str:
        return replay_progress(source.bytes_read, size, time.monotonic() - t0)

    await serve(worker, StatusReporter(worker.metrics.totals, tty=tty, interval=5.0,
                                       extra=progress))
    return worker


def replay_progress(done: int, size: int | None, elapsed: float) -> str:
    """`37% 12.0 MiB/s ETA 0:41` (a file of known size), `120 MiB 12.0 MiB/s` (stdin)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    speed = f"{rate / 2**20:.1f} MiB/s"
    if not size:
        return f"{done >> 20} MiB {speed}"
    left = max(size - done, 0)
    eta = "?" if rate <= 0 else f"{int(left / rate) // 60}:{int(left / rate) % 60:02d}"
    return f"{done / size:4.0%} {speed} ETA {eta}"


def print_summary(worker: Worker, elapsed: float, out=sys.stdout) -> int:
    """Print the summary; return the records left in the backlog."""
    m, t = worker.metrics, worker.metrics.totals
    rate = t.received / elapsed if elapsed > 0 else 0.0
    print(f"{t.received} notifications in {elapsed:.2f} s ({rate:,.0f}/s): "
          f"{t.malformed} malformed, {t.matched} rule matches, {t.forwarded} delivered, "
          f"{t.dead_lettered} dead-lettered", file=out)
    restored = sum(r.counts.restored for r in worker.runners)
    left = worker.backlog_size()
    store = worker.backlog
    backlog = store is not None and bool(restored or left or worker.unconfigured_dead_lettered)
    if store is not None and backlog:
        print(f"backlog {store.path}: {restored} record(s) from an earlier run "
              f"(delivered first, counted above), {left} left", file=out)
    if worker.unconfigured_dead_lettered:
        print(f"  {worker.unconfigured_dead_lettered} record(s) of actions not in these rules "
              "were dead-lettered", file=out)
    if left:
        print(f"  not delivered: {left} record(s) stay in the backlog; run the replay (or "
              "engine run with these rules) again once the destination is up", file=out)
    well_formed = m.rules.well_formed
    header: tuple[str, ...] = ("rule", "matched", "not matched", "action", "forwarded",
                               "dead-lettered")
    if backlog:
        header += ("from backlog", "in backlog")
    rows: list[tuple[str, ...]] = [header]
    by_rule: dict[str, list] = {}
    for r in worker.runners:
        by_rule.setdefault(r.rule_id, []).append(r)
    for rule, matched in m.rules.matched.items():
        runners = by_rule.get(rule) or [None]
        for i, r in enumerate(runners):
            head = (rule, str(matched), str(well_formed - matched)) if i == 0 else ("", "", "")
            tail: tuple[str, ...] = ((r.action_id, str(r.counts.forwarded),
                                      str(r.counts.dead_lettered))
                                     if r else ("-", "", ""))
            if store is not None and backlog:
                tail += (str(r.counts.restored), str(store.size(r.action_id)[0])) if r \
                    else ("", "")
            rows.append(head + tail)
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.rjust(w) if c in (1, 2, 4, 5, 6, 7) else cell.ljust(w)
                               for c, (cell, w) in enumerate(zip(row, widths, strict=True))),
              file=out)
    return left
