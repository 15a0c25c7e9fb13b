"""Starting a listener with an error that says which one failed.

Used by every server of the engine (the HTTP source here, the metrics
endpoint in runtime, the management API in app), so it lives at the lowest
layer they share.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


class ListenError(OSError):
    """A listener could not bind; the message names which one and where."""

    def __str__(self) -> str:
        return str(self.strerror)


@asynccontextmanager
async def listening(what: str, host: str, port: int) -> AsyncIterator[None]:
    """Around binding a listener: a bind failure names the endpoint (`what`)
    and the address instead of a bare `[Errno 98] address already in use`."""
    try:
        yield
    except OSError as e:
        # asyncio's own text repeats the address; the errno's is enough
        cause = os.strerror(e.errno).lower() if e.errno else str(e)
        raise ListenError(e.errno, f"{what}: cannot listen on {url_host(host)}:{port}: "
                          f"{cause}") from None


async def start_site(site: web.TCPSite, what: str, host: str, port: int) -> None:
    """`site.start()` within `listening`."""
    async with listening(what, host, port):
        await site.start()


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
