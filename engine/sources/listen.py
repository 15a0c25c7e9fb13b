"""Starting a listener with an error that says which one failed.

Used by every server of the engine (the HTTP source here, the metrics
endpoint in runtime, the management API in app), so it lives at the lowest
layer they share.
"""

from __future__ import annotations

import os

from aiohttp import web


class ListenError(OSError):
    """A listener could not bind; the message names which one and where."""

    def __str__(self) -> str:
        return str(self.strerror)


async def start_site(site: web.TCPSite, what: str, host: str, port: int) -> None:
    """`site.start()`, with a bind failure naming the endpoint (`what`) and
    the address instead of a bare `[Errno 98] address already in use`."""
    try:
        await site.start()
    except OSError as e:
        # asyncio's own text repeats the address; the errno's is enough
        cause = os.strerror(e.errno).lower() if e.errno else str(e)
        raise ListenError(e.errno, f"{what}: cannot listen on {url_host(host)}:{port}: "
                          f"{cause}") from None


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
