"""`engine run --workers N`: N worker processes from one rule file.

One process runs one core's worth of the data path (the event loop and
the rule core hold the GIL), so the supervisor starts N copies of
`engine run` for the same files, each told its index in the environment
(`ENGINE_WORKER_INDEX`), and:

* restarts a worker that exits while the supervisor is running (after 1 s,
  doubling up to 30 s while it keeps dying within a minute of its start);
* on SIGTERM/SIGINT, passes SIGTERM to every worker (each drains and acks
  as a single `engine run` does), waits for them, and kills what is still
  running after `worker.shutdown_timeout` + 10 s; should the supervisor
  itself be killed, the workers get SIGTERM from the kernel (Linux).

How the N workers share the work: each worker consumes as one member of
the Kafka source's consumer group (partitions are spread over the
workers); the HTTP source binds its port with SO_REUSEPORT, so the kernel
spreads connections over the workers; an MQTT source with a `shared_group`
subscribes as one member of the broker's shared subscription. Per worker, `for_worker` gives a
state directory `<worker.state_dir>/worker-<i>` (the backlog is locked per
directory) and the metrics endpoint the configured port + 1 + i (port 0
stays 0: any free port), composed on top of `--metrics-listen`/`--state-dir`;
the supervisor serves the configured port itself, every worker's metrics
merged (engine.app.metrics_merge). Backlogs a different number of workers
left behind are taken over at start (`stranded_backlogs`).
A file source is divided only when `--workers N` (N >= 2) is asked for:
worker i replays the i-th of N byte ranges of the file (per-device order
then holds within a part, not across parts; by default a file is replayed
by one process, in order); a worker whose file sources all ended exits 0
and is done, not restarted, and the supervisor exits once every worker has
(a worker that fails replays its part again: at-least-once).
Other sources are not divided (MQTT without `shared_group`: every worker
would receive every message; device_api: its device registry and
connections live in one process; standard input), so the supervisor
refuses them.

How many by default (`engine run` without `--workers`): one per CPU this
process may use (`usable_cpus`: its affinity mask, capped by a cgroup CPU
quota such as a container's `--cpus`, which `os.cpu_count()` does not see),
or one process, saying why, when the configuration cannot be divided
(`how_many`). SIGHUP to the supervisor is passed to every
worker (each reloads its rule files).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

ENV_INDEX = "ENGINE_WORKER_INDEX"
ENV_COUNT = "ENGINE_WORKERS"
SHARED_SOURCES = ("kafka", "http", "mqtt")  # sources N workers can divide between them
DIVIDED_SOURCES = ("file",)  # ... when asked to explicitly (--workers N)
_RESTART_MIN, _RESTART_MAX, _STABLE_S = 1.0, 30.0, 60.0
_PR_SET_PDEATHSIG = 1


def worker_index() -> int | None:
    """This process's index when a supervisor started it, else None."""
    v = os.environ.get(ENV_INDEX)
    return int(v) if v is not None else None


def worker_count() -> int:
    """How many workers the supervisor that started this process runs (1: none)."""
    return int(os.environ.get(ENV_COUNT, "1"))


def worker_state_dir(root: str, index: int) -> str:
    return os.path.join(root, f"worker-{index}")


def stranded_backlogs(root: str, index: int | None, n: int) -> tuple[str, ...]:
    """The backlogs under the state directory `root` that no process of
    this layout opens, which worker `index` of `n` (None: a single process
    using `root` itself) takes over: a single process takes every worker's;
    worker 0 the single process's; worker i those of workers j >= n with
    j % n == i. So going from N workers to fewer, or to or from one process,
    strands nothing a backlog held."""
    found: list[tuple[int, str]] = []
    if index == 0:
        found.append((-1, os.path.join(root, "backlog.db")))
    try:
        names = os.listdir(root)
    except OSError:  # no state directory yet
        names = []
    for name in names:
        prefix, _, j = name.partition("-")
        if prefix != "worker" or not j.isdigit():
            continue
        if index is None or (int(j) >= n and int(j) % n == index):
            found.append((int(j), os.path.join(root, name, "backlog.db")))
    return tuple(path for _, path in sorted(found) if os.path.exists(path))


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup"
                ) -> int:
    """The CPUs this process may use: its affinity mask, capped by the CPU
    quota of its cgroups (rounded down: two workers on 1.5 CPUs would be
    throttled); at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        n = min(n, math.floor(quota))
    return max(1, n)


def _cgroup_quota(root: str, proc_cgroup: str) -> float | None:
    """CPUs allowed by the smallest quota on the way from this process's
    cgroup up to the root (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`);
    None: no quota (or no cgroup filesystem)."""
    v2, v1 = "", ""
    try:
        with open(proc_cgroup) as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    v2 = path
                elif "cpu" in controllers.split(","):
                    v1 = path
    except (OSError, ValueError):
        pass
    found: list[float] = []
    for base, path, read in ((root, v2, _v2_quota), (os.path.join(root, "cpu"), v1, _v1_quota),
                             (os.path.join(root, "cpu,cpuacct"), v1, _v1_quota)):
        parts = [p for p in path.split("/") if p]
        # Innermost first; a container's own cgroup namespace shows it as "/".
        for k in range(len(parts), -1, -1):
            q = read(os.path.join(base, *parts[:k]))
            if q is not None:
                found.append(q)
    return min(found) if found else None


def _v2_quota(d: str) -> float | None:
    try:
        with open(os.path.join(d, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(d: str) -> float | None:
    try:
        with open(os.path.join(d, "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(d, "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def how_many(config: Any, requested: int | None) -> int:
    """The worker processes `engine run --workers requested` runs (None:
    the option not given; None and 0: one per usable CPU). More than one for
    a configuration that cannot be divided: ValueError naming why when
    asked for, one process (logged, with why) by default."""
    n = requested or usable_cpus()
    why = single_process_reason(config, explicit=bool(requested)) if n > 1 else None
    if why is None:
        return n
    if requested is not None:
        raise ValueError(why)
    log.info("one process, not one per core (%d): %s", n, why)
    return 1


def single_process_reason(config: Any, explicit: bool = False) -> str | None:
    """Why this configuration must run in one process, or None (`explicit`:
    `--workers N` was asked for)."""
    if config.api is not None:
        return "the management API runs in one process"
    return check_sources(config, explicit)


def check_sources(config: Any, explicit: bool = False) -> str | None:
    """Why the configured sources cannot be divided between workers, or None
    (`explicit`: `--workers N` was asked for, which divides files too)."""
    for entry in config.sources:
        kind = entry.kind
        if kind in DIVIDED_SOURCES:
            if entry.options.path == "-":
                return ("source 'file' reading standard input cannot be shared by several "
                        "workers; give it a file's path")
            if not explicit:
                return ("source 'file' is replayed in order by one process unless --workers N "
                        "(N >= 2) asks to divide it (per-device order then holds within each "
                        "part)")
            continue
        if kind == "http" and _host_port(entry.options.listen)[1] == 0:
            return ("an HTTP source on port 0 cannot be shared by several workers (each "
                    "would listen on another port); give it a port")
        if kind == "mqtt" and entry.options.shared_group is None:
            return ("source 'mqtt' without shared_group cannot be shared by several workers "
                    "(each would get every message); set mqtt.shared_group")
        if kind == "mqtt" and entry.options.device_status is not None:
            return ("mqtt.device_status cannot be shared by several workers (each would "
                    "report every connect and disconnect); run it in a worker of its own")
        if kind not in SHARED_SOURCES:
            return (f"source {kind!r} cannot be shared by several workers; --workers "
                    f"supports {', '.join(SHARED_SOURCES + DIVIDED_SOURCES)} (mqtt with "
                    f"shared_group)")
    return None


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host, int(port)


def worker_port(port: int, index: int) -> int:
    """Worker `index`'s metrics port when the configured one is `port` (the
    supervisor's merged endpoint)."""
    return port + 1 + index


def for_worker(config: Any, index: int) -> Any:
    """The configuration of worker `index`: its own state directory and
    metrics port (`worker_port`; port 0 stays 0)."""
    update: dict[str, Any] = {"worker": config.worker.model_copy(update={
        "state_dir": worker_state_dir(config.worker.state_dir, index)})}
    if config.metrics is not None:
        host, port = _host_port(config.metrics.listen)
        if port:
            update["metrics"] = config.metrics.model_copy(
                update={"listen": f"{host}:{worker_port(port, index)}"})
    return config.model_copy(update=update)


def finite(config: Any) -> bool:
    """Whether every source ends by itself (files): such a worker is done
    once it exits 0."""
    return all(entry.kind in DIVIDED_SOURCES for entry in config.sources)


def share_sources(sources: Sequence[Any], index: int, count: int) -> None:
    """Worker `index` of `count`: the HTTP sources bind their port with the
    other workers; a file source reads its part of the file."""
    for s in sources:
        if hasattr(s, "reuse_port"):
            s.reuse_port = True
        if hasattr(s, "part"):
            s.part = (index, count)


def _die_with_parent() -> None:
    """In a worker, before exec: SIGTERM when the supervisor dies (even of
    SIGKILL), so no worker is left running unsupervised (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: workers outlive a killed supervisor
        pass


class Supervisor:
    def __init__(self, argv: Sequence[str], n: int, *, shutdown_timeout: float = 30.0,
                 finite: bool = False) -> None:
        """`argv`: the `engine run` command line of one worker; `finite`:
        its sources end by themselves, so a worker that exits 0 is done."""
        self.argv = list(argv)
        self.n = n
        self.finite = finite
        self.done = [False] * n
        self.shutdown_timeout = shutdown_timeout
        self.procs: list[subprocess.Popen | None] = [None] * n
        self._started = [0.0] * n
        self._delay = [_RESTART_MIN] * n
        self._due = [0.0] * n  # when a dead worker is restarted
        self._stopping = False

    def _start(self, i: int) -> None:
        env = {**os.environ, ENV_INDEX: str(i), ENV_COUNT: str(self.n)}
        # A session of its own: a terminal's Ctrl-C (SIGINT to the whole
        # foreground group) reaches the supervisor only, which passes one
        # SIGTERM on; a worker signalled twice would give up its drain.
        p = self.procs[i] = subprocess.Popen(self.argv, env=env, preexec_fn=_die_with_parent,
                                             start_new_session=True)
        self._started[i] = time.monotonic()
        log.info("worker %d started (pid %d)", i, p.pid)

    def _stop(self, *_: object) -> None:
        self._stopping = True

    def _reload(self, *_: object) -> None:
        """SIGHUP: each worker reloads its rule files."""
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGHUP)

    def run(self) -> int:
        """Start the workers and supervise them until SIGTERM/SIGINT (or,
        `finite`, until every worker is done); the exit code is 0 when every
        worker stopped cleanly."""
        old = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._reload)
        try:
            for i in range(self.n):
                self._start(i)
            while not self._stopping and not all(self.done):
                self._watch()
                time.sleep(0.2)
            return self._shutdown()
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _watch(self) -> None:
        now = time.monotonic()
        for i, p in enumerate(self.procs):
            if p is None:
                if not self.done[i] and now >= self._due[i]:
                    self._start(i)
                continue
            code = p.poll()
            if code is None:
                continue
            self.procs[i] = None
            if code == 0 and self.finite:
                self.done[i] = True
                log.info("worker %d (pid %d) finished its part", i, p.pid)
                continue
            ran = now - self._started[i]
            self._delay[i] = (_RESTART_MIN if ran > _STABLE_S
                              else min(self._delay[i] * 2, _RESTART_MAX))
            self._due[i] = now + self._delay[i]
            log.error("worker %d (pid %d) exited with %s after %.1f s; restarting in %g s",
                      i, p.pid, code, ran, self._delay[i])

    def _shutdown(self) -> int:
        running = [p for p in self.procs if p is not None and p.poll() is None]
        for p in running:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + 10
        ok = True
        for p in running:
            try:
                ok &= p.wait(max(0.0, deadline - time.monotonic())) == 0
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time; killing it", p.pid)
                p.kill()
                p.wait()
                ok = False
        return 0 if ok else 1


def supervise(files: Sequence[str], extra_args: Sequence[str], n: int,
              shutdown_timeout: float, metrics_listen: str | None = None,
              finite: bool = False) -> int:
    """Run N workers; with `metrics_listen` (HOST:PORT, PORT not 0) serve
    their metrics merged there (the workers use `worker_port`); `finite`:
    see `Supervisor`."""
    from engine.app.metrics_merge import MergedEndpoint

    argv = [sys.executable, "-m", "engine", "run", *extra_args, "--", *files]
    endpoint = None
    if metrics_listen is not None:
        host, port = _host_port(metrics_listen)
        if port:
            try:
                endpoint = MergedEndpoint(host, port, [worker_port(port, i) for i in range(n)])
            except OSError as e:
                log.error("cannot serve the merged metrics on %s: %s", metrics_listen, e)
                return 1
            endpoint.start()
    try:
        return Supervisor(argv, n, shutdown_timeout=shutdown_timeout, finite=finite).run()
    finally:
        if endpoint is not None:
            endpoint.close()
