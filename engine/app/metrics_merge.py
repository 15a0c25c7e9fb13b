"""The supervisor's metrics endpoint: every worker's /metrics in one.

`engine run --workers N` with a metrics port P serves this on P and runs
worker i's own endpoint on P + 1 + i. A scrape of P fetches every worker's
/metrics (concurrently, 2 s each) and returns their samples with a
`worker="i"` label added, each metric family once (its HELP and TYPE, then
the samples of every worker) - so `sum by (...)` in PromQL gives the
totals, and nothing is summed here that should not be (gauges of rules
loaded, lag per partition). `engine_worker_up{worker="i"}` is 1 for each
worker that answered, 0 for one that did not (restarting). /readyz is 200
when every worker's /readyz is; /healthz when the supervisor runs.

A plain-threaded HTTP server (stdlib): the supervisor is synchronous, and
a scrape every few seconds needs nothing more.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TIMEOUT = 2.0


def merge(texts: list[str | None]) -> str:
    """Prometheus text of each worker (None: no answer) as one exposition,
    with a `worker` label on every sample."""
    families: dict[str, tuple[list[str], list[str]]] = {}  # name -> (HELP/TYPE, samples)
    current: tuple[list[str], list[str]] | None = None
    for i, text in enumerate(texts):
        if text is None:
            continue
        label = f'worker="{i}"'
        current = None
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    current = families.setdefault(parts[2], ([], []))
                    if len(current[0]) < 2 and line not in current[0]:
                        current[0].append(line)
                continue
            brace, space = line.find("{"), line.find(" ")
            if brace != -1 and (space == -1 or brace < space):
                sep = "" if line[brace + 1] == "}" else ","
                sample = f"{line[:brace + 1]}{label}{sep}{line[brace + 1:]}"
            else:
                sample = f"{line[:space]}{{{label}}}{line[space:]}"
            if current is None:  # a sample before any HELP/TYPE
                current = families.setdefault("", ([], []))
            current[1].append(sample)
    out = []
    for head, samples in families.values():
        out += head
        out += samples
    out.append("# HELP engine_worker_up 1 if the worker answered this scrape, else 0.")
    out.append("# TYPE engine_worker_up gauge")
    out += [f'engine_worker_up{{worker="{i}"}} {0 if t is None else 1}'
            for i, t in enumerate(texts)]
    return "\n".join(out) + "\n"


class MergedEndpoint:
    """Serves on host:port the merged /metrics, /readyz and /healthz of the
    workers whose endpoints are http://<host>:<worker_ports[i]>."""

    def __init__(self, host: str, port: int, worker_ports: list[int]) -> None:
        self.n = n = len(worker_ports)
        peer = "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host.strip("[]")
        peer = f"[{peer}]" if ":" in peer else peer
        self.urls = [f"http://{peer}:{p}" for p in worker_ports]
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="metrics-scrape")
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = endpoint.metrics().encode(), 200, CONTENT_TYPE
                elif path == "/readyz":
                    ready = endpoint.ready()
                    body = b"ready\n" if ready else b"not ready: a worker is not\n"
                    status, ctype = (200 if ready else 503), "text/plain"
                elif path == "/healthz":
                    body, status, ctype = b"ok\n", 200, "text/plain"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:  # no access log
                pass

        self.server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="metrics-endpoint")

    def start(self) -> None:
        self._thread.start()
        log.info("metrics of %d workers merged at %s:%d/metrics", self.n,
                 *self.server.server_address[:2])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._pool.shutdown(wait=False)

    def _get(self, url: str) -> tuple[int, str | None]:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, None
        except (OSError, ValueError):
            return 0, None

    def metrics(self) -> str:
        got = list(self._pool.map(self._get, [u + "/metrics" for u in self.urls]))
        return merge([text if status == 200 else None for status, text in got])

    def ready(self) -> bool:
        return all(status == 200 for status, _ in
                   self._pool.map(self._get, [u + "/readyz" for u in self.urls]))
