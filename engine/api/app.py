"""The HTTP side: aiohttp routes, authentication, limits, IoTDA-shaped errors.

    app = create_app(api_config, store)          # store opened by the caller
    await serve(engine_config)                   # `engine api CONFIG`

Paths, methods, bodies, status codes and field names are IoTDA's (API
reference 1.4.8 rules and actions, 1.4.21 backlog and 1.4.22 flow control
policies) under `/v5/iot/{project_id}/routing-rule/`; the test and metrics
endpoints and `/openapi.json` are this engine's. What each request does to
the configuration lives in `engine.api.service`; this module only speaks HTTP.
`/` is Alibaba's RPC API (`engine.api.aliyun`), which authenticates itself.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import LineTooLong
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.api import aliyun, console, devices, errors, openapi, params, service
from engine.api.auth import Authenticator, Principal
from engine.api.effective import republish_broker
from engine.api.metrics import MetricsProvider, metrics_body
from engine.api.pagination import Page
from engine.api.ratelimit import RateLimiter
from engine.api.route import STORE, Handler, Route
from engine.api.service import ACTIONS, BACKLOG, FLOWCONTROL, RULES, Kind
from engine.api.storage import Store, open_store
from engine.config import ApiConfig, EngineConfig
from engine.config.errors import pydantic_message
from engine.config.limits import ApiLimits
from engine.config.models import parse_listen
from engine.config.ruletests import rule_evaluator, scope_mismatch
from engine.language.explain import explain_where
from engine.language.lint import lint
from engine.language.tester import test_rule
from engine.schema import RuleSubject

log = logging.getLogger(__name__)

AUTH = web.AppKey("auth", Authenticator)
LIMITS = web.AppKey("limits", ApiLimits)
LIMITER = web.AppKey("limiter", RateLimiter)
METRICS_PROVIDER = web.AppKey("metrics_provider", object)  # a MetricsProvider or None

BASE = "/v5/iot/{project_id}/routing-rule"
ALIYUN_PATH = "/"  # Alibaba's RPC API (engine.api.aliyun), where its SDK sends every action

# ------------------------------------------------------------------ request bodies of the extensions


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class RuleTestBody(_Body):
    """Evaluate a stored rule on a sample notification."""

    event: dict[str, Any]
    explain: bool = False
    """Also answer `explain`: why the rule did or did not match (its subject first)."""


class TestBody(_Body):
    """Evaluate a SELECT/WHERE pair on a sample notification (nothing stored)."""

    select: str | None = Field(default=None, max_length=2500)
    where: str | None = Field(default=None, max_length=2500)
    event: dict[str, Any]
    explain: bool = False
    """Also answer `explain`: the value of every path, call and condition of WHERE."""
    subject: RuleSubject | None = None
    """The rule's subject, for the subject check and the lint warnings."""


TestBody.__test__ = False  # type: ignore[attr-defined]  # not a pytest class


# ------------------------------------------------------------------ helpers


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise errors.unsupported_media_type()
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.bad_format("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise errors.bad_format("The body must be a JSON object.")
    return data


def _parse(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {pydantic_message(e)}" for e in exc.errors()
        )
        raise errors.bad_format(detail) from None


def _project(request: web.Request) -> str:
    return request.match_info["project_id"]


def _object_id(request: web.Request, name: str) -> str:
    """The id in the path, 400 if it is not in IoTDA's id format."""
    return params.check_id(name, request.match_info[name])


def _store(request: web.Request) -> Store:
    return request.app[STORE]


# ------------------------------------------------------------------ IoTDA resources


def _create(kind: Kind) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        plan = service.plan_create(kind, await _body(request), request.app[LIMITS])
        (written,) = await _store(request).change(_project(request), plan)
        return _json(service.present(kind, written.body), 201)

    return handler


def _list(kind: Kind) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        page = Page.from_query(request.query)
        records = await _store(request).load(_project(request))
        items, count, marker = page.apply(service.filtered(records, kind, request.query))
        return _json({kind.name: items, "count": count, "marker": marker})

    return handler


def _show(kind: Kind) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        records = await _store(request).load(_project(request))
        record = service.find(records, kind, _object_id(request, kind.id_field))
        return _json(service.present(kind, record.body))

    return handler


def _update(kind: Kind) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        plan = service.plan_update(kind, _object_id(request, kind.id_field),
                                   await _body(request), request.app[LIMITS])
        (written,) = await _store(request).change(_project(request), plan)
        return _json(service.present(kind, written.body))

    return handler


def _delete(kind: Kind) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        await _store(request).change(_project(request),
                                     service.plan_delete(kind, _object_id(request, kind.id_field)))
        return web.Response(status=204)

    return handler


# ------------------------------------------------------------------ extensions


def _test_result(select: str | None, where: str | None, event: dict[str, Any],
                 subject: tuple[str, str] | None, explain: bool) -> dict[str, Any]:
    result = test_rule(select, where, event)
    if result.error is not None:
        return {"result": "error", "error": {**result.error.to_dict(),
                                             "snippet": result.error.snippet}}
    out: dict[str, Any]
    trace = explain_where(where, event, subject, select) if explain or subject else None
    if trace is not None and trace.subject is not None:
        out = {"result": "no_match"}  # the engine never evaluates it on this kind
    elif not result.matched:
        out = {"result": "no_match"}
    else:
        out = {"result": "match", "output": result.output}
    out["warnings"] = [w.to_dict() for w in lint(select, where, subject)]
    if explain and trace is not None:
        out["explain"] = trace.to_dict()
    return out


async def test_stored_rule(request: web.Request) -> web.Response:
    body = _parse(RuleTestBody, await _body(request))
    project = _project(request)
    records = await _store(request).load(project)
    rule_id = _object_id(request, "rule_id")
    rule = service.find(records, RULES, rule_id).body
    subject = (rule["subject"]["resource"], rule["subject"]["event"])
    out = _test_result(rule.get("select") or None, rule.get("where") or None, body.event,
                       subject, body.explain)
    if out["result"] == "match":
        # Subject and WHERE hold: the rule's app scope decides, as on a worker.
        model = next(r for r in service.project_config(records, project).rules
                     if r.rule_id == rule_id)
        if rule_evaluator(model)(body.event) is None:
            out = {"result": "no_match", "scope": scope_mismatch(model, body.event),
                   **{k: v for k, v in out.items() if k not in ("result", "output")}}
    return _json(out)


async def test_rule_text(request: web.Request) -> web.Response:
    body = _parse(TestBody, await _body(request))
    subject = (body.subject.resource, body.subject.event) if body.subject else None
    return _json(_test_result(body.select or None, body.where or None, body.event, subject,
                              body.explain))


async def rule_metrics(request: web.Request) -> web.Response:
    project, rule_id = _project(request), _object_id(request, "rule_id")
    records = await _store(request).load(project)
    service.find(records, RULES, rule_id)
    action_ids = [a.id for a in service.of_kind(records, ACTIONS) if a.body.get("rule_id") == rule_id]
    provider: MetricsProvider | None = request.app.get(METRICS_PROVIDER)  # type: ignore[assignment]
    counters = provider.rule_metrics(project, rule_id) if provider is not None else None
    return _json(metrics_body(rule_id, action_ids, counters, provider is not None))


async def openapi_document(request: web.Request) -> web.Response:
    return _json(openapi.document(tuple(ROUTES)))


# ------------------------------------------------------------------ the route table


def _resource_routes(kind: Kind, path: str, title: str) -> list[Route]:
    item = f"{path}/{{{kind.id_field}}}"
    return [
        Route("POST", path, _create(kind), f"Create a {title}", "create", kind),
        Route("GET", path, _list(kind), f"List {title}s", "list", kind),
        Route("GET", item, _show(kind), f"Query a {title}", "show", kind),
        Route("PUT", item, _update(kind), f"Modify a {title}", "update", kind),
        Route("DELETE", item, _delete(kind), f"Delete a {title}", "delete", kind),
    ]


ROUTES: list[Route] = [
    *_resource_routes(RULES, f"{BASE}/rules", "rule triggering condition"),
    *_resource_routes(ACTIONS, f"{BASE}/actions", "rule action"),
    *_resource_routes(FLOWCONTROL, f"{BASE}/flowcontrol-policy", "flow control policy"),
    *_resource_routes(BACKLOG, f"{BASE}/backlog-policy", "backlog (stacking) policy"),
    Route("POST", f"{BASE}/rules/{{rule_id}}/test", test_stored_rule,
          "Evaluate a stored rule on a sample notification (extension)", "test_rule", RULES,
          RuleTestBody),
    Route("POST", f"{BASE}/test", test_rule_text,
          "Evaluate a SELECT/WHERE on a sample notification (extension)", "test", None, TestBody),
    Route("GET", f"{BASE}/rules/{{rule_id}}/metrics", rule_metrics,
          "Counters of a rule and its actions from the worker (extension)", "metrics", RULES),
    *devices.ROUTES,
    *console.ROUTES,
    Route("GET", "/openapi.json", openapi_document, "This API as OpenAPI 3.1", "openapi"),
]


# ------------------------------------------------------------------ middlewares


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves in IoTDA's shape."""
    try:
        return await handler(request)
    except errors.ApiError as err:
        response = _json(err.body(), err.status)
        if err.status == 429:
            response.headers["Retry-After"] = "1"
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        mapped = {404: errors.path_not_found(), 405: errors.method_not_allowed(),
                  413: errors.too_large(request.app[LIMITS].max_body_bytes)}.get(exc.status)
        if mapped is None:
            mapped = errors.ApiError(exc.status, "IOTDA.000008", exc.reason)
        return _json(mapped.body(), mapped.status)
    except asyncio.CancelledError:
        raise
    except Exception:
        # The traceback goes to the log (it names no request body or header);
        # the client learns only that it failed.
        log.exception("%s %s failed", request.method, request.path)
        return _json(errors.internal().body(), 500)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every request (before routing errors, so an anonymous
    caller cannot map the API), then apply the per-credential rate limit."""
    limits = request.app[LIMITS]
    if (request.content_length or 0) > limits.max_body_bytes:
        raise errors.too_large(limits.max_body_bytes)
    try:
        body = await request.read()  # the signature covers the body; aiohttp caches it
    except web.HTTPRequestEntityTooLarge:
        raise errors.too_large(limits.max_body_bytes) from None
    if request.path == ALIYUN_PATH:
        return await handler(request)  # Alibaba's RPC API: signed per request, verified there
    if request.method == "GET" and console.is_public(request.path):
        return await handler(request)  # the console's static files; its data needs a token
    principal: Principal | None = request.app[AUTH].authenticate(
        request.method, request.raw_path, request.headers, body)
    project = request.match_info.get("project_id")
    if principal is None or (project is not None and project not in principal.projects):
        log.info("authentication failed: %s %s", request.method, request.path)
        raise errors.unauthorized()
    if not request.app[LIMITER].allow(principal.credential):
        raise errors.rate_limited(limits.rate)
    return await handler(request)


# ------------------------------------------------------------------ requests the HTTP parser refuses


class _Protocol(web.RequestHandler):
    """aiohttp's connection handler, except that a request its HTTP parser
    refuses (a 10,000-character URL, a malformed header line) is answered in
    IoTDA's shape and logged as one line. Such a request never reaches the
    middlewares: aiohttp answers it itself, in plain text, and logs the
    parser's exception with its traceback, as if the server had failed."""

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)  # a bug: keep the traceback
        # Not the parser's message: it quotes the start of the line, which
        # may hold a token in a query string.
        if isinstance(exc, LineTooLong):
            detail = f"The request line or a header is longer than {self.max_line_size} bytes."
        else:
            detail = "The HTTP request is malformed."
        log.warning("refused a malformed HTTP request from %s: %s (%s)", request.remote,
                    detail, type(exc).__name__ if exc is not None else "no detail")
        response = _json(errors.bad_format(detail).body(), status)
        response.force_close()  # the parser's state is lost: the connection cannot go on
        return response


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class _AccessLogger(AbstractAccessLogger):
    """aiohttp's access line without the query string of Alibaba's RPC API:
    there it carries every parameter of the action, secrets of a
    CreateRuleAction Configuration (database passwords) included."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        target = request.path if request.path == ALIYUN_PATH else request.path_qs
        self.logger.info('%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"', request.remote,
                         request.method, target, request.version.major, request.version.minor,
                         response.status, response.body_length, time,
                         request.headers.get("User-Agent", "-"))


class ApiRunner(web.AppRunner):
    """`web.AppRunner` for the API: its connections are `_Protocol`s."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("access_log_class", _AccessLogger)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return _Server(base.request_handler, request_factory=base.request_factory,
                       handler_cancellation=base.handler_cancellation,
                       loop=asyncio.get_running_loop(), **base._kwargs)


# ------------------------------------------------------------------ the application


def create_app(api: ApiConfig, store: Store, limits: ApiLimits | None = None,
               metrics: MetricsProvider | None = None, broker: str | None = None
               ) -> web.Application:
    """The API application. `store` must be opened (and later closed) by the caller.
    `broker`: the MQTT broker Alibaba's `Pub` publishes through (the rule files'
    mqtt source, engine.api.effective.republish_broker)."""
    limits = limits or ApiLimits()
    app = web.Application(middlewares=[error_middleware, auth_middleware],
                          client_max_size=limits.max_body_bytes)
    app[STORE] = store
    app[AUTH] = Authenticator(api)
    app[LIMITS] = limits
    app[LIMITER] = RateLimiter(limits.rate, limits.burst)
    app[METRICS_PROVIDER] = metrics
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    rpc = aliyun.make_handler(aliyun.Verifier(api), lambda: app[STORE], lambda: app[LIMITS],
                              lambda: app[LIMITER], broker)
    for method in ("GET", "POST"):
        app.router.add_route(method, ALIYUN_PATH, rpc)
    return app


async def serve(config: EngineConfig, limits: ApiLimits | None = None,
                ready: Callable[[int], None] | None = None) -> None:
    """Run the API of `config.api` until SIGTERM/SIGINT. `ready(port)` is
    called once it listens (the port matters when the config says 0)."""
    api = config.api
    assert api is not None
    async with open_store(api.storage) as store:
        runner = ApiRunner(create_app(api, store, limits, broker=republish_broker(config)))
        await runner.setup()
        host, port = parse_listen(api.listen)
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("management API listening on http://%s:%d (storage: %s)", host, bound,
                 "memory" if not api.storage else api.storage.split("://")[0])
        if ready is not None:
            ready(bound)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await runner.cleanup()
