import asyncio
import io
import json
import logging

from engine.runtime.metrics import Totals
from engine.runtime.status import JsonFormatter, StatusReporter


async def test_tty_rewrites_one_line_with_rates():
    totals = Totals()
    out = io.StringIO()
    rep = StatusReporter(totals, tty=True, stream=out)
    rep.interval = 0.1
    task = asyncio.create_task(rep.run())
    for _ in range(5):
        totals.received += 1000
        totals.matched += 100
        totals.forwarded += 90
        totals.inflight = 10
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    text = out.getvalue()
    assert "\n" not in text                        # one line, rewritten in place
    frames = [f for f in text.split("\r\x1b[K") if f]
    assert frames and "in-flight 10  backlog 0" in frames[-1] and "total in 5000" in frames[-1]
    rate = int(frames[0].split("in ")[1].split("/s")[0].rstrip("k"))
    assert 2000 <= rate <= 20000                   # ~1000 events per 0.05 s


def test_rates_are_per_second_between_two_snapshots():
    rep = StatusReporter(Totals(), tty=False)
    line = rep.line(Totals(received=100), Totals(received=2100, matched=50, forwarded=40,
                                                 inflight=7, backlogged=3, dead_lettered=1), 2.0)
    assert line == ("in 1000/s  matched 25/s  forwarded 20/s  in-flight 7  backlog 3  "
                    "dead-lettered 1  total in 2100")


def test_json_log_lines():
    rec = logging.LogRecord("engine.x", logging.WARNING, __file__, 1, "action %s: %s", ("a", "down"),
                            None)
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["level"] == "WARNING" and doc["message"] == "action a: down"
    assert doc["logger"] == "engine.x"
