"""Hot reload never applies a file that is being written, empty or cut off,
and refuses a configuration whose restart-only sections differ as a whole
(issue 11, item 1)."""

from __future__ import annotations

import asyncio
import logging
import time

import yaml

from engine.config import load_config
from engine.runtime import reloader as reloader_module
from engine.runtime.watch import ConfigWatcher
from engine.runtime.worker import Worker
from tests.runtime.e2e import EngineProcess, Receiver, free_port, wait_ready, write_config
from tests.runtime.support import assert_balanced, by_label, scrape
from tests.runtime.test_reload import (
    Posters,
    StreamSource,
    check_exactly_once,
    rules,
    top,
    wait_log,
)


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_watcher_waits_until_a_slow_writer_is_done(tmp_path):
    """A file written in pieces (a slow copy, `cat new > file`) is reported
    once, with its final content: two polls must see the same content."""
    path = tmp_path / "rules.yaml"
    path.write_text("x: 0\n")
    w = ConfigWatcher([str(path)], interval=0.3)  # pauses of the writer: well under that
    await w.prime()
    seen: list[str] = []

    async def collect():
        async for _ in w.changes():
            seen.append(path.read_text())

    collector = asyncio.create_task(collect())
    final = "".join(f"k{i}: {i}\n" for i in range(12))
    with open(path, "w") as f:  # truncated to 0 bytes first, like `cat new > file`
        f.flush()
        await asyncio.sleep(0.15)
        for line in final.splitlines(keepends=True):
            f.write(line)
            f.flush()
            await asyncio.sleep(0.05)  # shorter than a poll: still being written
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.8)
    collector.cancel()
    assert seen == [final]


async def reloaded(tmp_path, text: str, caplog, **top_sections) -> tuple[Worker, bool]:
    """A worker started from rules('v1'), then the file replaced by `text`
    and reloaded by hand."""
    path = tmp_path / "rules.yaml"
    write_config(path, rules("v1", "http://127.0.0.1:9/in", **top_sections))
    worker = Worker.from_config(load_config([path]), sources=[StreamSource(1)],
                                serve_metrics=False, actions=False, config_paths=[path])
    path.write_text(text)
    caplog.clear()
    applied = await worker.reload("test")
    return worker, applied


def v1_yaml(**top_sections) -> str:
    return yaml.safe_dump(rules("v1", "http://127.0.0.1:9/in", **top_sections), sort_keys=False)


async def test_an_empty_file_is_refused(tmp_path, caplog):
    for text in ("", "\n", "# nothing yet\n"):
        worker, applied = await reloaded(tmp_path, text, caplog)
        assert not applied
        assert worker.pipeline.generation.number == 1
        assert [r.rule_id for r in worker.config.rules] == ["messages"]
        errs = errors(caplog)
        assert any("is empty" in e for e in errs), errs
        assert "the running configuration is kept" in errs[-1]


async def test_a_rule_cut_off_after_select_is_refused(tmp_path, caplog):
    full = v1_yaml()
    cut = full[:full.index("select:") + len("select:")] + "\n"  # no WHERE, no action
    worker, applied = await reloaded(tmp_path, cut, caplog)
    assert not applied and worker.pipeline.generation.number == 1
    errs = errors(caplog)
    assert any("rules[0].select" in e and "no value" in e for e in errs), errs


async def test_a_file_without_rules_is_refused_when_rules_run(tmp_path, caplog):
    # What a file cut before its rules leaves: only the first section.
    worker, applied = await reloaded(tmp_path, "worker:\n  batch_size: 10\n", caplog)
    assert not applied and worker.pipeline.generation.number == 1
    errs = errors(caplog)
    assert len(errs) == 1 and "no rules" in errs[0], errs
    # Deactivating every rule is the explicit way to forward nothing.
    off = rules("v1", "http://127.0.0.1:9/in")
    off["rules"][0]["active"] = False
    worker, applied = await reloaded(tmp_path, yaml.safe_dump(off), caplog)
    assert applied


async def test_restart_only_changes_refuse_the_whole_reload(tmp_path, caplog):
    ingest, metrics = free_port(), free_port()
    sections = top(ingest, metrics)
    changed = rules("v2", "http://127.0.0.1:9/in", **top(ingest, metrics, max_inflight=7))
    changed["dead_letter"] = {"file": str(tmp_path / "dl.jsonl")}
    worker, applied = await reloaded(tmp_path, yaml.safe_dump(changed), caplog, **sections)
    assert not applied
    assert worker.pipeline.generation.number == 1  # the new rule is not applied either
    assert worker.config.actions[0].action_id == "hook-v1"
    errs = errors(caplog)
    assert len(errs) == 1, errs  # one line
    assert errs[0].startswith("reload refused: the new configuration changes sources, "
                              "dead_letter, which only a restart applies"), errs
    assert not any(r.levelno == logging.WARNING for r in caplog.records)


async def test_a_file_changed_while_it_is_read_is_read_again(tmp_path, caplog, monkeypatch):
    path = tmp_path / "rules.yaml"
    write_config(path, rules("v1", "http://127.0.0.1:9/in"))
    worker = Worker.from_config(load_config([path]), sources=[StreamSource(1)],
                                serve_metrics=False, actions=False, config_paths=[path])
    full = v1_yaml().replace("v1", "v2")
    path.write_text(full[:len(full) // 2].rsplit("\n", 1)[0] + "\n")  # half a file
    loads = []
    real = reloader_module.load_config

    def load_while_written(paths, **kw):
        config = real(paths, **kw)
        loads.append(config)
        if len(loads) == 1:
            path.write_text(full)  # the writer finishes while the half is being loaded
        return config

    monkeypatch.setattr(reloader_module, "load_config", load_while_written)
    assert await worker.reload("test")
    assert len(loads) == 2
    assert worker.config.actions[0].action_id == "hook-v2"


# ---------------------------------------------------------------- under a stream


async def test_engine_run_applies_no_partial_or_empty_file_under_a_stream(tmp_path):
    """HTTP ingest -> engine run -> HTTP receiver; the rule file is rewritten
    slowly in place, then emptied, then left cut off: only the complete file
    is applied, and every accepted event that matches is delivered once."""
    ingest, metrics = free_port(), free_port()
    path = tmp_path / "rules.yaml"
    async with Receiver() as a, Receiver() as b:
        write_config(path, rules("v1", a.url, **top(ingest, metrics)))
        v2 = yaml.safe_dump(rules("v2", b.url, **top(ingest, metrics)), sort_keys=False)
        with EngineProcess(path, env={"ENGINE_RELOAD_POLL": "0.5"},
                           stderr_file=tmp_path / "engine.log") as engine:
            await wait_ready(metrics, engine)
            async with Posters(f"http://127.0.0.1:{ingest}/in") as posters:
                await posters.until(300)
                # 1. A slow writer: truncate, then the new file in pieces,
                #    each pause shorter than a poll.
                with open(path, "w") as f:
                    f.flush()
                    await asyncio.sleep(0.1)
                    for i in range(0, len(v2), 40):
                        f.write(v2[i:i + 40])
                        f.flush()
                        await asyncio.sleep(0.05)
                await wait_log(engine, "reload applied (rule set 2)")
                await posters.until(300)
                # 2. The file emptied and left so.
                path.write_text("")
                await wait_log(engine, "is empty")
                await posters.until(1500)  # ~the 2.5 s of an empty file
                # 3. The file cut off in the middle of a rule and left so.
                path.write_text(v2[:v2.index("select:") + len("select:")] + "\n")
                await wait_log(engine, "rules[0].select")
                await posters.until(1500)
                # 4. A complete file whose sources differ: refused as a whole.
                path.write_text(yaml.safe_dump(rules("v1", a.url, **top(ingest, metrics,
                                                                       max_inflight=7))))
                await wait_log(engine, "changes sources, which only a restart applies")
                await posters.until(300)
            samples = await scrape(f"http://127.0.0.1:{metrics}/metrics")
            code, log = engine.stop()
    assert code == 0, log
    print(f"\nFIGURES reload under a stream: {len(posters.sent)} events accepted, "
          f"{len(posters.sent) // 2} matching, delivered {len(a.bodies)} (v1) + "
          f"{len(b.bodies)} (v2); refusals logged: "
          f"{log.count('reload rejected:') + log.count('reload refused:')}")
    assert "reload applied (rule set 3)" not in log, log
    assert "rules +0 -1" not in log
    check_exactly_once(posters.sent, a.bodies, b.bodies)  # zero events lost
    assert b.bodies and len(b.bodies) > 900
    assert by_label(samples, "engine_rule_matched_total", "rule")["messages"] == \
        len(posters.sent) // 2
    assert_balanced(samples)


async def test_a_reload_changing_only_tests_keeps_the_rules(tmp_path, caplog):
    """tests: is not runtime configuration: a failing test changes nothing the
    worker runs; an invalid tests: section is refused like any invalid file."""
    caplog.set_level(logging.INFO, logger="engine.runtime.worker")
    failing = rules("v1", "http://127.0.0.1:9/in")
    failing["tests"] = [{"name": "fails", "input": {"resource": "device.status",
                                                    "event": "update"},
                         "expect": [{"rule": "messages", "output": {"never": True}}]}]
    worker, applied = await reloaded(tmp_path, yaml.safe_dump(failing), caplog)
    assert not applied and worker.pipeline.generation.number == 1
    assert [t.name for t in worker.config.tests] == ["fails"]
    assert any("unchanged" in r.getMessage() for r in caplog.records)
    failing["tests"][0]["expect"][0]["rule"] = "mesages"
    worker, applied = await reloaded(tmp_path, yaml.safe_dump(failing), caplog)
    assert not applied
    assert any("tests[0].expect[0].rule" in e and "did you mean 'messages'?" in e
               for e in errors(caplog)), errors(caplog)
