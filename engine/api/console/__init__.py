"""The rule console: a browser page served by the management API at
`/console` (docs/console.md).

The page and its script are static package data and carry no data, so
they are served without authentication; everything they show comes from
the API's own endpoints, which the script calls with the token the user
signs in with (`X-Auth-Token`, as any API client): the console has no
access an API client of the same project would not have. A strict
Content-Security-Policy allows only this origin's script, style and
requests (no inline code, no external resources).
"""

from __future__ import annotations

import functools
from importlib import resources

import orjson
from aiohttp import web

from engine.api.route import Handler, Route
from engine.sources.fleet import KINDS, Fleet

PATH = "/console"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_FILES = {"": ("index.html", "text/html"), "/console.js": ("console.js", "text/javascript"),
          "/console.css": ("console.css", "text/css")}


@functools.cache
def _asset(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


@functools.cache
def samples() -> bytes:
    """One sample notification per kind (the simulator's, fixed seed)."""
    out = {}
    for resource, event in KINDS:
        fleet = Fleet(seed=1, devices=10, kinds=[(resource, event)])
        out[f"{resource}/{event}"] = fleet.notification(1.7e9)
    return orjson.dumps(out)


def _headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": f"{content_type}; charset=utf-8", "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache"}


def _serve(suffix: str) -> Handler:
    name, content_type = _FILES[suffix]

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=_asset(name), headers=_headers(content_type))

    return handler


async def sample_notifications(request: web.Request) -> web.Response:
    return web.Response(body=samples(), headers=_headers("application/json"))


def is_public(path: str) -> bool:
    """The console's static files: served without a credential (no data in them)."""
    return path == PATH or path.startswith(PATH + "/")


ROUTES: list[Route] = [
    *(Route("GET", PATH + suffix, _serve(suffix), "The rule console (extension)", "console")
      for suffix in _FILES),
    Route("GET", PATH + "/samples.json", sample_notifications,
          "One sample notification per kind, for the console (extension)", "console"),
]
