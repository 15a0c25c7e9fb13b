"""Command line: `engine <command>`.

Each sub-command lives in a small function; commands whose capability is not
built yet say so and exit non-zero rather than pretend.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.config import EngineConfig, Rule

EXIT_OK = 0
EXIT_NO_MATCH = 1
EXIT_NOT_DELIVERED = 1  # replay: records stay in the backlog
EXIT_TEST_FAILED = 1   # check, test: a rule test failed
EXIT_ERROR = 2


def _cmd_eval(args: argparse.Namespace) -> int:
    import difflib

    from engine import _core
    from engine.language.explain import explain_where
    from engine.language.lint import lint
    from engine.language.tester import render_json, test_rule

    try:
        if args.event == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.event, "rb") as f:
                data = f.read()
    except OSError as e:
        print(f"engine eval: cannot read event: {e}", file=sys.stderr)
        return EXIT_ERROR
    select, where = args.select, args.where
    if args.rules or args.rule:
        if not (args.rules and args.rule) or select is not None or where is not None:
            print("engine eval: --rules FILE and --rule ID go together, instead of "
                  "--select/--where", file=sys.stderr)
            return EXIT_ERROR
        config = _load_for("eval", args.rules)
        if config is None:
            return EXIT_ERROR
        rule = next((r for r in config.rules if r.rule_id == args.rule), None)
        if rule is None:
            known = [r.rule_id for r in config.rules]
            hint = difflib.get_close_matches(args.rule, known, n=1)
            print(f"engine eval: no rule {args.rule!r} in {', '.join(args.rules)}"
                  + (f" (did you mean {hint[0]!r}?)" if hint else ""), file=sys.stderr)
            return EXIT_ERROR
        return _eval_file_rule(args, rule, data)
    result = test_rule(select, where, data)
    if result.error is not None:
        print(result.error, file=sys.stderr)
        return EXIT_ERROR
    if result.event_error is not None:
        print(f"engine eval: {args.event}: {result.event_error}", file=sys.stderr)
        return EXIT_ERROR
    for warning in lint(select, where):
        print(f"warning: {warning}", file=sys.stderr)
    trace = None
    if args.explain:
        event = _core.decode_event(data)  # a JSON object: test_rule checked it
        trace = explain_where(where, event if isinstance(event, dict) else {}, select=select)
    if not result.matched:
        print("no match")
        if trace is not None:
            print(trace.render())
        return EXIT_NO_MATCH
    print(render_json(result.output))
    if trace is not None:
        print(trace.render(), file=sys.stderr)
    return EXIT_OK


def _eval_file_rule(args: argparse.Namespace, rule: Rule, data: bytes) -> int:
    """`engine eval --rules FILE --rule ID`: the rule as the worker runs it
    (subject, app scope, dialect, topic: the evaluator of rule tests)."""
    from engine import _core
    from engine.config.ruletests import rule_evaluator, scope_mismatch
    from engine.language.explain import explain_where
    from engine.language.lint import lint
    from engine.language.tester import render_json

    event = _core.decode_event(data)
    if isinstance(event, _core.MalformedEvent):
        print(f"engine eval: {args.event}: {event.reason}", file=sys.stderr)
        return EXIT_ERROR
    output = rule_evaluator(rule)(event)
    iotda = rule.dialect == "iotda"   # lint and explain read IoTDA's language
    subject = (rule.subject.resource, rule.subject.event)
    if iotda:
        for warning in lint(rule.select, rule.where, subject):
            print(f"warning: {warning}", file=sys.stderr)
    trace = explain_where(rule.where, event, subject, rule.select) if args.explain and iotda \
        else None
    if args.explain and not iotda:
        print(f"note: no explain trace for the {rule.dialect} dialect", file=sys.stderr)
    if output is None:
        print("no match")
        if trace is not None:
            text = trace.render()
            if trace.subject is None and trace.result == "TRUE":   # the scope decided
                print(scope_mismatch(rule, event))
                text = text.replace(trace.summary, "WHERE is TRUE", 1)
            print(text)
        return EXIT_NO_MATCH
    print(render_json(output))
    if trace is not None:
        print(trace.render(), file=sys.stderr)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from engine.app import demo

    return demo.main(args.duration, args.rate, args.devices, args.seed, args.out)


def _parse_kinds(text: str) -> list[tuple[str, str]]:
    """`device.property/report,device/create` -> [(resource, event), ...]."""
    kinds = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        resource, sep, event = item.rpartition("/")
        if not sep or not resource or not event:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not RESOURCE/EVENT (e.g. device.property/report)")
        kinds.append((resource, event))
    return kinds


SIMULATE_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _cmd_simulate(args: argparse.Namespace) -> int:
    """Sample notifications as NDJSON, input for `engine eval` and `engine replay`;
    with --mqtt, simulated devices publishing on IoTDA device topics."""
    mqtt_only = [o for o, v in (("--rate", args.rate), ("--duration", args.duration),
                                ("--qos", args.qos), ("--product", args.product),
                                ("--registry-out", args.registry_out)) if v is not None]
    if args.mqtt is None and mqtt_only:
        print(f"engine simulate: {', '.join(mqtt_only)} need --mqtt URL", file=sys.stderr)
        return EXIT_ERROR
    if args.mqtt is not None:
        if args.kinds or args.start is not None:
            print("engine simulate: --kinds and --start print notifications; --mqtt publishes "
                  "device messages (use one or the other)", file=sys.stderr)
            return EXIT_ERROR
        return _simulate_mqtt(args)
    import orjson

    from engine.sources.fleet import KINDS, Fleet

    kinds = [k for group in args.kinds for k in group] or None
    unknown = [f"{r}/{e}" for r, e in kinds or () if (r, e) not in KINDS]
    if unknown:
        print(f"engine simulate: unknown notification kind {', '.join(unknown)} (expected: "
              f"{', '.join(f'{r}/{e}' for r, e in KINDS)})", file=sys.stderr)
        return EXIT_ERROR
    if args.count is None:
        args.count = 10
    if args.start is None:
        args.start = SIMULATE_START
    if args.devices < 1 or args.count < 0:
        print("engine simulate: --devices must be >= 1 and --count >= 0", file=sys.stderr)
        return EXIT_ERROR
    fleet = Fleet(seed=args.seed, devices=args.devices, start=args.start, kinds=kinds)
    out = sys.stdout.buffer
    for i in range(args.count):
        out.write(orjson.dumps(fleet.notification(args.start + i)) + b"\n")
    out.flush()
    return EXIT_OK


def _simulate_mqtt(args: argparse.Namespace) -> int:
    from engine.app import device_simulator as sim

    product = args.product or "simthermo"
    qos = 1 if args.qos is None else args.qos
    rate = 1000.0 if args.rate is None else args.rate
    if args.devices < 1 or rate <= 0 or (args.count is not None and args.count < 0):
        print("engine simulate: --devices must be >= 1, --rate > 0 and --count >= 0",
              file=sys.stderr)
        return EXIT_ERROR
    if args.registry_out:
        import yaml

        with open(args.registry_out, "w") as f:
            yaml.safe_dump({"registry": sim.registry(args.devices, product)}, f,
                           sort_keys=False)
        print(f"engine simulate: registry of {args.devices} device(s) written to "
              f"{args.registry_out}", file=sys.stderr)
    if args.duration is None and args.count is None:
        args.duration = 10.0
    try:
        sent, seconds = sim.run(args.mqtt, devices=args.devices, rate=rate,
                                duration=args.duration, count=args.count, qos=qos,
                                seed=args.seed, product=product)
    except (ValueError, OSError) as e:
        print(f"engine simulate: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    print(f"engine simulate: {sent} device message(s) published in {seconds:.1f}s "
          f"({sent / max(seconds, 1e-9):.0f}/s, QoS {qos}{', acked' if qos else ''})",
          file=sys.stderr)
    return EXIT_OK


def _load_for(command: str, files: Sequence[str]):
    """The validated config, or None after printing every problem."""
    from engine.config import ConfigError, load_config

    try:
        return load_config(files)
    except ConfigError as err:
        for issue in err.issues:
            print(issue, file=sys.stderr)
        print(f"engine {command}: invalid configuration", file=sys.stderr)
        return None


def exit_summary(t) -> str:
    """What `engine run` did, and what it leaves for the next start."""
    text = (f"engine run: {t.received} in, {t.matched} matched, {t.forwarded} delivered, "
            f"{t.dead_lettered} dead-lettered, {t.backlogged} left in the backlog")
    if t.inflight:  # a drain that timed out: the source delivers these again
        text += f", {t.inflight} not settled (unacked: the source redelivers them)"
    return text


def _run_overrides(args: argparse.Namespace):
    """EngineConfig -> EngineConfig with `--metrics-listen`/`--state-dir` applied
    (raises ValueError naming the option when a value is invalid)."""
    from pydantic import ValidationError

    from engine.config.models import MetricsConfig, WorkerConfig

    def apply(config):
        update = {}
        try:
            if args.metrics_listen is not None:
                base = config.metrics.model_dump() if config.metrics else {}
                update["metrics"] = MetricsConfig(**{**base, "listen": args.metrics_listen})
            if args.state_dir is not None:
                update["worker"] = WorkerConfig(**{**config.worker.model_dump(),
                                                   "state_dir": args.state_dir})
        except ValidationError as e:
            err = e.errors()[0]
            option = "--metrics-listen" if err["loc"][0] == "listen" else "--state-dir"
            raise ValueError(f"{option}: {err['msg']}") from None
        return config.model_copy(update=update) if update else config

    return apply


def _cmd_run(args: argparse.Namespace) -> int:
    """The forwarding worker: runs until its sources end or SIGTERM/SIGINT."""
    from engine.app.main import run_sync, serve
    from engine.runtime.status import StatusReporter, setup_logging
    from engine.runtime.worker import Worker, WorkerOptions

    setup_logging(args.log_format, args.log_level)
    config = _load_for("run", args.files)
    if config is None:
        return EXIT_ERROR
    if not config.sources:
        print("engine run: no sources configured (add a sources: section)", file=sys.stderr)
        return EXIT_ERROR

    from engine.app import supervisor

    try:
        overrides = _run_overrides(args)
        config = overrides(config)
    except ValueError as e:
        print(f"engine run: {e}", file=sys.stderr)
        return EXIT_ERROR
    index = supervisor.worker_index()
    if args.workers is not None and args.workers < 0:
        print("engine run: --workers must be 0 (one per core) or more", file=sys.stderr)
        return EXIT_ERROR
    n = 1
    if index is None:
        try:
            n = supervisor.how_many(config, args.workers)
        except ValueError as e:
            print(f"engine run --workers: {e}", file=sys.stderr)
            return EXIT_ERROR
    if n > 1:
        extra = ["--log-format", args.log_format, "--log-level", args.log_level,
                 "--status", "log", "--status-interval", str(args.status_interval)]
        # The workers apply the same overrides, then their own port/state dir on top.
        if args.metrics_listen is not None:
            extra += ["--metrics-listen", args.metrics_listen]
        if args.state_dir is not None:
            extra += ["--state-dir", args.state_dir]
        return supervisor.supervise(args.files, extra, n, config.worker.shutdown_timeout,
                                    config.metrics.listen if config.metrics else None,
                                    finite=supervisor.finite(config))
    # Backlogs a different number of workers left under this state directory.
    adopt = supervisor.stranded_backlogs(config.worker.state_dir, index,
                                         supervisor.worker_count())
    if index is not None:
        base, i = overrides, index

        def overrides(c):  # a reload keeps this worker's port and state dir too
            return supervisor.for_worker(base(c), i)

        config = supervisor.for_worker(config, index)
    tty = None if args.status == "auto" else args.status == "tty"

    def status(worker: Worker) -> StatusReporter:
        # Called once with the worker before it runs: the place to make
        # reloads keep the command-line overrides too.
        worker.config_overrides = overrides
        return StatusReporter(worker.metrics.totals, tty=tty, interval=args.status_interval)

    async def go() -> None:
        if config.api is not None:  # the management API in this worker
            from engine.app.managed import run_with_api

            worker = await run_with_api(config, status, config_paths=args.files,
                                        options=WorkerOptions(adopt_backlogs=adopt))
        else:
            worker = Worker.from_config(config, config_paths=args.files,
                                        options=WorkerOptions(adopt_backlogs=adopt))
            if index is not None:
                supervisor.share_sources(worker.sources, index, supervisor.worker_count())
            await serve(worker, status(worker))
        print(exit_summary(worker.metrics.totals), file=sys.stderr)

    try:
        run_sync(go())
    except Exception as e:  # start-up or source failure: one line, not a traceback
        print(f"engine run: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    import time

    from engine.app.main import run_sync
    from engine.app.replay import print_summary, run_replay
    from engine.runtime.status import setup_logging

    setup_logging(args.log_format, args.log_level)
    config = _load_for("replay", [args.rules])
    if config is None:
        return EXIT_ERROR
    t0 = time.monotonic()
    try:
        worker = run_sync(run_replay(args.file, config, dry_run=args.dry_run))
    except Exception as e:
        print(f"engine replay: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR
    left = print_summary(worker, time.monotonic() - t0)
    return EXIT_NOT_DELIVERED if left else EXIT_OK


def _add_log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="log line format on stderr (default: text)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")


def _report_tests(config: EngineConfig, quiet: bool = False) -> int:
    """Run the rule files' tests; print each failure (and, unless `quiet`,
    each pass). Returns the number of failed tests."""
    from engine.config.ruletests import run_tests

    failed = 0
    for test, failures in run_tests(config):
        if failures:
            failed += 1
            for failure in failures:
                print(failure.render(), file=sys.stderr)
        elif not quiet:
            print(f"ok   {test.name!r}")
    if failed:
        print(f"{failed} of {len(config.tests)} test{'s' if len(config.tests) != 1 else ''} "
              "failed", file=sys.stderr)
    return failed


def _cmd_test(args: argparse.Namespace) -> int:
    """Run the `tests:` of rule files: 0 all passed, 1 a test failed, 2 invalid."""
    from engine.config import ConfigError, load_config

    try:
        config = load_config(args.files)
    except ConfigError as err:
        for issue in err.issues:
            print(issue, file=sys.stderr)
        return EXIT_ERROR
    if not config.tests:
        print("engine test: the files have no tests: section (docs/configuration.md#tests)",
              file=sys.stderr)
        return EXIT_ERROR
    if _report_tests(config):
        return EXIT_TEST_FAILED
    print(f"OK: {len(config.tests)} test{'s' if len(config.tests) != 1 else ''} passed")
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    """Validate and compile rule files: every problem, one per line, exit 2."""
    from engine.config import ConfigError, load_config

    try:
        config = load_config(args.files)
    except ConfigError as err:
        for issue in err.issues:
            print(issue, file=sys.stderr)
        count = len(err.issues)
        print(f"{count} problem{'s' if count != 1 else ''} found", file=sys.stderr)
        return EXIT_ERROR
    from engine.language.lint import lint

    for rule in config.rules:
        if rule.dialect != "iotda":   # lint reads IoTDA's language: Alibaba paths look unknown
            continue
        subject = (rule.subject.resource, rule.subject.event)
        for warning in lint(rule.select, rule.where, subject):
            print(f"warning: rule {rule.rule_id}: {warning}", file=sys.stderr)
    if config.tests and _report_tests(config, quiet=True):
        return EXIT_TEST_FAILED
    active = sum(rule.active for rule in config.rules)
    tests = f"; {len(config.tests)} tests passed" if config.tests else ""
    print(
        f"OK: {len(config.rules)} rules ({active} active), {len(config.actions)} actions, "
        f"{len(config.flowcontrol_policies)} flow control policies, "
        f"{len(config.backlog_policies)} backlog policies, {len(config.sources)} sources{tests}"
    )
    if not config.rules:  # valid (e.g. sources only), but an empty file also looks like this
        print("note: no rules: a worker with only this forwards nothing", file=sys.stderr)
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    """The JSON Schema of rule files (for yaml-language-server and other editors)."""
    import json

    from engine.config.rulefile_schema import rule_file_schema

    print(json.dumps(rule_file_schema(), indent=2 if args.indent else None, sort_keys=False))
    return EXIT_OK


def _masked(value):
    """A model dump with every secret masked; a URL keeps all but its password."""
    from urllib.parse import urlsplit, urlunsplit

    from pydantic import SecretStr

    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    if isinstance(value, SecretStr):
        text = value.get_secret_value()
        try:
            url = urlsplit(text)
        except ValueError:
            return "**********"
        if url.scheme and url.hostname and url.password is not None:
            netloc = url.netloc.rsplit("@", 1)[1]
            return urlunsplit(url._replace(netloc=f"{url.username}:**********@{netloc}"))
        return "**********"
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _cmd_config(args: argparse.Namespace) -> int:
    """The configuration as the engine sees it: defaults filled in, `${ENV}`
    values substituted, secrets masked."""
    import json

    import yaml

    config = _load_for("config", args.files)
    if config is None:
        return EXIT_ERROR
    data = _masked(config.model_dump(mode="python", exclude_none=True))
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return EXIT_OK


def _api_config(command: str, files: Sequence[str]):
    """The validated config if it has an api: section, else None (reported)."""
    config = _load_for(command, files)
    if config is not None and config.api is None:
        print(f"engine {command}: no api: section in {', '.join(files)}", file=sys.stderr)
        return None
    return config


def _cmd_api(args: argparse.Namespace) -> int:
    """The management API as its own process, until SIGTERM/SIGINT."""
    from engine.api import ApiLimits, serve
    from engine.app.main import run_sync
    from engine.runtime.status import setup_logging

    setup_logging(args.log_format, args.log_level)
    config = _api_config("api", args.files)
    if config is None:
        return EXIT_ERROR
    try:
        limits = ApiLimits.from_config(config.api.limits, args.limit)
    except ValueError as e:
        print(f"engine api: --limit: {e}", file=sys.stderr)
        return EXIT_ERROR
    try:
        run_sync(serve(config, limits))
    except Exception as e:  # start-up failure (port taken, storage unreachable): one line
        print(f"engine api: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _project_for(command: str, config, project: str | None) -> str | None:
    configured = sorted(config.api.projects)
    if project is None and len(configured) == 1:
        return configured[0]
    if project is None:
        print(f"engine {command}: --project is required (configured: {', '.join(configured)})",
              file=sys.stderr)
    return project


def _cmd_export(args: argparse.Namespace) -> int:
    import os

    from engine.api import open_store
    from engine.api.transfer import export_project
    from engine.app.main import run_sync
    from engine.config import ConfigError

    config = _api_config("export", args.config)
    project = config and _project_for("export", config, args.project)
    if not project:
        return EXIT_ERROR

    async def go() -> str:
        async with open_store(config.api.storage) as store:
            return await export_project(store, project)

    try:
        text = run_sync(go())
    except ConfigError as err:
        print(f"engine export: the stored configuration of {project} is invalid:\n{err}",
              file=sys.stderr)
        return EXIT_ERROR
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"engine export: wrote {args.output}", file=sys.stderr)
    return EXIT_OK


def _cmd_import(args: argparse.Namespace) -> int:
    from engine.api import open_store
    from engine.api.errors import ApiError
    from engine.api.transfer import import_sections, read_rule_file
    from engine.app.main import run_sync
    from engine.config import ConfigError

    config = _api_config("import", args.config)
    project = config and _project_for("import", config, args.project)
    if not project:
        return EXIT_ERROR
    try:
        sections, ignored = read_rule_file(args.file)
    except ConfigError as err:
        for issue in err.issues:
            print(issue, file=sys.stderr)
        print(f"engine import: {args.file} is invalid; nothing imported", file=sys.stderr)
        return EXIT_ERROR
    if ignored:
        print(f"engine import: ignoring sections {', '.join(ignored)} (only rules, actions and "
              "policies are stored)", file=sys.stderr)

    async def go() -> int:
        async with open_store(config.api.storage) as store:
            return await import_sections(store, project, sections, args.replace)

    try:
        count = run_sync(go())
    except ApiError as err:  # the file is valid alone but not with what is stored
        print(f"engine import: {err.message}; nothing imported", file=sys.stderr)
        return EXIT_ERROR
    print(f"engine import: {count} objects stored in project {project}", file=sys.stderr)
    return EXIT_OK


def _version() -> str:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("iot-forwarding-engine")
    except PackageNotFoundError:  # run from a source tree that was never installed
        ours = "unknown"
    return f"engine {ours} (Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine",
        description="IoT data-forwarding engine: evaluates forwarding rules (IoTDA's or "
        "Alibaba's dialect) on device notifications and delivers the matches.",
    )
    parser.add_argument("--version", action="version", version=_version(),
                        help="print the engine's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("eval", help="evaluate one rule on one event (the rule debugger)")
    p.add_argument("--select", default=None, help="SELECT text (default: *)")
    p.add_argument("--where", default=None, help="WHERE text (default: always true)")
    p.add_argument("--rules", nargs="+", metavar="FILE", default=None,
                   help="rule files to take the rule from (with --rule; evaluated as the worker "
                   "does: subject, app scope, dialect, topic)")
    p.add_argument("--rule", metavar="ID", default=None, help="the rule's rule_id (with --rules)")
    p.add_argument("--explain", action="store_true",
                   help="print why: the value and type of every path, call and condition of "
                   "WHERE on the event, and which one made it FALSE or UNKNOWN")
    p.add_argument("event", metavar="EVENT.json", help="event file, or - for stdin")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("simulate", help="print sample notifications (all 12 kinds) as NDJSON; "
                       "with --mqtt, simulated devices publishing on IoTDA device topics")
    p.add_argument("--count", type=int, default=None,
                   help="how many (default 10; with --mqtt: no limit, see --duration)")
    p.add_argument("--kinds", type=_parse_kinds, action="append", default=[],
                   metavar="RESOURCE/EVENT,...",
                   help="only these kinds, e.g. device.property/report,device/create "
                   "(repeatable; default: all 12 in their usual shares)")
    p.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    p.add_argument("--devices", type=int, default=10, help="simulated devices (default 10)")
    p.add_argument("--start", type=float, default=None, metavar="EPOCH",
                   help="event time of the first notification, seconds since the epoch; one "
                   "second between notifications (default 2026-01-01T00:00:00Z)")
    g = p.add_argument_group("device messages (--mqtt)")
    g.add_argument("--mqtt", metavar="URL", default=None,
                   help="publish device messages to this broker instead, e.g. "
                   "mqtt://127.0.0.1:1883 (docs/devices.md)")
    g.add_argument("--rate", type=float, default=None,
                   help="messages per second, all devices together (default 1000)")
    g.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="how long to publish (default 10, unless --count)")
    g.add_argument("--qos", type=int, choices=[0, 1], default=None,
                   help="publish QoS (default 1)")
    g.add_argument("--product", default=None, help="product id of the devices (default "
                   "simthermo)")
    g.add_argument("--registry-out", metavar="FILE",
                   help="also write the devices' registry: section (a rule file) to FILE")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("check", help="validate and compile rule files, run their tests: "
                       "0 valid, 1 a test failed, 2 invalid")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "test", help="run the tests: sections of rule files (expected outputs per rule): "
        "0 all passed, 1 a test failed, 2 invalid",
        description="Run the tests: sections of rule files: each test's notification "
                    "(input, or each of inputs) goes through the named rules, evaluated as "
                    "the worker evaluates them (subject, app scope, dialect, topic), and is "
                    "compared with the expected output, contains or no_match. Exit 0 when "
                    "all pass, 1 when a test failed (a unified diff per failure on stderr), "
                    "2 when a file is invalid or has no tests. engine check runs them too "
                    "(docs/configuration.md#tests).")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="rule files, merged as engine run merges them")
    p.set_defaults(func=_cmd_test)

    p = sub.add_parser("schema", help="print the JSON Schema of rule files (editor completion)")
    p.add_argument("--compact", dest="indent", action="store_false",
                   help="one line instead of indented JSON")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("config", help="print the effective configuration of rule files")
    p.add_argument("--effective", action="store_true",
                   help="after defaults and ${ENV} substitution, secrets masked (the default; "
                   "the flag documents intent)")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("run", help="run the forwarding worker")
    p.add_argument("files", nargs="+", metavar="FILE")
    _add_log_options(p)
    p.add_argument("--status", choices=["auto", "tty", "log"], default="auto",
                   help="live status line (tty) or periodic log lines (default: tty if stderr is one)")
    p.add_argument("--status-interval", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between status log lines when not on a terminal (default 10)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run N worker processes under a supervisor (Kafka, HTTP and "
                        "MQTT-with-shared_group sources; a file source only when an N of 2 "
                        "or more is given: each worker replays a part of the file; 1: this process "
                        "alone). Default and 0: one per usable core (affinity and cgroup "
                        "CPU quota); by default, one process where the configuration "
                        "cannot be divided")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve /metrics, /healthz and /readyz here (overrides metrics.listen; "
                   "enables the endpoint without a metrics: section)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="backlog and default dead-letter directory (overrides worker.state_dir; "
                   "one per worker process)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "replay", help="replay an NDJSON file through rules",
        description="Replay an NDJSON file through the rules and actions of RULES.yaml. What "
                    "the backlog of worker.state_dir holds from an earlier run (with the "
                    "backlogs an engine run --workers left there) is delivered first, and "
                    "the replay waits for the backlog to drain (up to "
                    "worker.shutdown_timeout seconds without progress). Exit 0 when everything "
                    "was delivered or dead-lettered, 1 when records stay in the backlog, 2 on "
                    "an error.")
    p.add_argument("file", metavar="FILE", help="NDJSON notifications, or - for stdin")
    p.add_argument("--rules", required=True, metavar="RULES.yaml")
    p.add_argument("--dry-run", action="store_true",
                   help="evaluate and count only; deliver nothing")
    _add_log_options(p)
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("demo", help="run the built-in demo (no external service needed)")
    p.add_argument("--duration", type=float, default=10.0, metavar="SECONDS",
                   help="how long the simulator runs (default 10)")
    p.add_argument("--rate", type=float, default=2000.0, help="events per second (default 2000)")
    p.add_argument("--devices", type=int, default=200, help="simulated devices (default 200)")
    p.add_argument("--seed", type=int, default=42, help="simulator seed (default 42)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where the JSONL outputs go (default: a new temporary directory)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("api", help="run the management API of the api: section (IoTDA "
                                   "under /v5/, Alibaba's rules-engine API at /)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="override an API limit, e.g. max_rules=500 or rate=20 (see docs/api.md)")
    _add_log_options(p)
    p.set_defaults(func=_cmd_api)

    p = sub.add_parser("export", help="write a project's stored configuration as a rule file")
    p.add_argument("--config", required=True, action="append", metavar="FILE",
                   help="engine configuration whose api.storage to read (repeatable)")
    p.add_argument("--project", help="project id (default: the only configured project)")
    p.add_argument("-o", "--output", metavar="RULES.yaml",
                   help="file to write (created owner-only: it holds secrets); default stdout")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("import", help="load a rule file into a project's stored configuration")
    p.add_argument("file", metavar="RULES.yaml")
    p.add_argument("--config", required=True, action="append", metavar="FILE",
                   help="engine configuration whose api.storage to write (repeatable)")
    p.add_argument("--project", help="project id (default: the only configured project)")
    p.add_argument("--replace", action="store_true",
                   help="delete stored objects the file does not have (default: add and replace by id)")
    p.set_defaults(func=_cmd_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `engine simulate | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return EXIT_OK
