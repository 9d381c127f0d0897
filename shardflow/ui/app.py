"""The dashboard as an ASGI application (Starlette, Jinja2 templates, vendored htmx).

Pages are rendered on the server; htmx only refreshes the live parts. Endpoints are
plain functions run in Starlette's thread pool, because the library they call blocks.
Every value from the database or the request reaches a page through Jinja's
autoescaping, and reaches a URL through :func:`urllib.parse.urlencode`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from shardflow.config.redaction import scrub_dsns
from shardflow.engine.bulk import (
    BulkResult,
    cancel_many,
    count_matching,
    failures,
    list_workflows,
    resume_many,
)
from shardflow.engine.cluster import Cluster
from shardflow.engine.filters import LISTABLE_STATES, WorkflowFilter
from shardflow.errors import ShardflowError, WorkflowError, WorkflowNotFound
from shardflow.ui import security, views
from shardflow.ui.guard import Guarded

log = logging.getLogger(__name__)

PAGE_SIZE = 50
MAX_FORM_BYTES = 64 * 1024
FILTER_FIELDS = tuple(WorkflowFilter.__dataclass_fields__)
DONE_MESSAGES = {
    "cancelled": "Workflow cancelled.",
    "resumed": "Workflow resumed: it is queued again.",
    "forked": "Fork created: this is the new workflow.",
}
# Links are built from these and the mount point (``root_path``), not with url_for: in
# an app mounted inside another, url_for would look names up in the outer app's routes.
PATHS = {
    "overview": "/",
    "workflows": "/workflows",
    "workflow": "/workflow",
    "failures": "/failures",
    "confirm": "/confirm",
    "action": "/action",
    "bulk": "/bulk",
    "bulk_run": "/bulk",
    "login_page": "/login",
    "login": "/login",
    "static": "/static",
}


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(
    cluster: Cluster,
    *,
    read_only: bool = False,
    auth: security.Auth | None = None,
    allowed_hosts: tuple[str, ...] | None = None,
    refresh_seconds: float = 5.0,
) -> ASGIApp:
    """The dashboard of ``cluster`` as an ASGI app; mount it anywhere in yours.

    ``read_only`` hides and refuses every action. ``auth`` requires a token or basic
    credentials (see :class:`~shardflow.ui.security.Auth`). ``allowed_hosts`` limits
    the ``Host`` header (``shardflow ui`` passes the loopback names when it runs
    without auth). The app never closes ``cluster``: its owner does.
    """
    key = security.new_key()
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("shardflow.ui", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    dsns = [shard.dsn for shard in cluster.config.shards]

    def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
        browser_id = request.cookies.get(security.CSRF_COOKIE) or security.new_browser_id()
        request.state.browser_id = browser_id

        def url(route: str, /, **params: Any) -> str:
            base = _path(request, route)
            query = {k: v for k, v in params.items() if v is not None and v != ""}
            return base + ("?" + urlencode(query) if query else "")

        body = env.get_template(template).render(
            request=request,
            url=url,
            static=lambda path: _path(request, "static") + "/" + path,
            csrf_field=security.CSRF_FIELD,
            csrf_token=security.csrf_token(key, browser_id),
            read_only=read_only,
            cluster_name=cluster.config.name,
            refresh_seconds=refresh_seconds,
            auth=auth,
            **context,
        )
        response = HTMLResponse(body, status_code=status)
        if request.cookies.get(security.CSRF_COOKIE) != browser_id:
            response.set_cookie(
                security.CSRF_COOKIE,
                browser_id,
                httponly=True,
                samesite="strict",
                path=_cookie_path(request),
            )
        return response

    def guard_action(request: Request, form: Mapping[str, str]) -> None:
        if read_only:
            raise _Refused(403, "The dashboard is read-only: actions are turned off.")
        if security.cross_site(request.headers):
            raise _Refused(403, "Refused: the request came from another site.")
        if not security.csrf_ok(
            key, request.cookies.get(security.CSRF_COOKIE), form.get(security.CSRF_FIELD)
        ):
            raise _Refused(403, "Refused: missing or wrong CSRF token. Reload the page and retry.")

    def error_page(request: Request, status: int, message: str) -> Response:
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        return render(
            request,
            "error.html",
            status,
            code=status,
            reason=reason,
            message=scrub_dsns(message, dsns),
        )

    # -- pages ------------------------------------------------------------------------------

    def overview(request: Request) -> Response:
        return render(request, "overview.html", data=views.overview(cluster))

    def workflows(request: Request) -> Response:
        raw = {k: request.query_params.get(k) for k in FILTER_FIELDS}
        filters = WorkflowFilter.from_strings(raw)
        cursor = request.query_params.get("cursor") or None
        page = list_workflows(
            cluster, filters, limit=PAGE_SIZE, cursor=cursor, skip_unavailable=True
        )
        return render(
            request,
            "workflows.html",
            page=page,
            filters=filters,
            raw={k: v or "" for k, v in raw.items()},
            query=filters.to_strings(),
            cursor=cursor,
            states=[s.value for s in LISTABLE_STATES],
            queues=sorted(cluster.config.queues),
            live=cursor is None and request.query_params.get("refresh") != "0",
        )

    def workflow(request: Request) -> Response:
        workflow_id = request.query_params.get("id", "")
        if not workflow_id:
            raise _Refused(400, "Which workflow? The page needs ?id=<workflow ID>.")
        done = DONE_MESSAGES.get(request.query_params.get("done", ""))
        return render(
            request,
            "workflow.html",
            view=views.workflow_view(cluster, workflow_id),
            done=done,
        )

    def failures_page(request: Request) -> Response:
        return render(request, "failures.html", groups=failures(cluster, limit=100))

    def confirm(request: Request) -> Response:
        action = request.query_params.get("action", "")
        workflow_id = request.query_params.get("id", "")
        if action not in ("cancel", "resume", "fork") or not workflow_id:
            raise _Refused(400, "Unknown action: choose cancel, resume or fork of a workflow.")
        view = views.workflow_view(cluster, workflow_id)
        return render(request, "confirm.html", action=action, view=view)

    async def action(request: Request) -> Response:
        form = await _form(request)
        guard_action(request, form)
        name = form.get("action", "")
        workflow_id = form.get("id", "")
        if not workflow_id:
            raise _Refused(400, "No workflow ID in the form.")
        if name == "cancel":
            await run_in_threadpool(cluster.cancel, workflow_id, "cancelled from the dashboard")
            target, done = workflow_id, "cancelled"
        elif name == "resume":
            await run_in_threadpool(cluster.resume, workflow_id)
            target, done = workflow_id, "resumed"
        elif name == "fork":
            try:
                from_step = int(form.get("from_step", ""))
            except ValueError:
                raise _Refused(400, "Fork: choose the step to run again from.") from None
            handle = await run_in_threadpool(cluster.fork, workflow_id, from_step)
            target, done = handle.workflow_id, "forked"
        else:
            raise _Refused(400, "Unknown action: choose cancel, resume or fork.")
        location = _path(request, "workflow") + "?" + urlencode({"id": target, "done": done})
        return RedirectResponse(location, status_code=303)

    def bulk_preview(request: Request) -> Response:
        action_name = request.query_params.get("action", "")
        if action_name not in ("cancel", "resume"):
            raise _Refused(400, "Unknown bulk action: choose cancel or resume.")
        filters = WorkflowFilter.from_strings(
            {k: request.query_params.get(k) for k in FILTER_FIELDS}
        )
        if filters.is_empty:
            raise _Refused(400, "A bulk action needs at least one filter.")
        states = (
            ("ENQUEUED", "RUNNING", "SUSPENDED")
            if action_name == "cancel"
            else (
                "CANCELLED",
                "ERROR",
                "DEAD",
            )
        )
        counts = count_matching(cluster, filters, states)
        return render(
            request,
            "bulk.html",
            action=action_name,
            filters=filters,
            query=filters.to_strings(),
            counts=counts,
            total=sum(counts.values()),
            result=None,
        )

    async def bulk_run(request: Request) -> Response:
        form = await _form(request)
        guard_action(request, form)
        action_name = form.get("action", "")
        filters = WorkflowFilter.from_strings({k: form.get(k) for k in FILTER_FIELDS})
        result: BulkResult
        if action_name == "cancel":
            result = await run_in_threadpool(
                lambda: cancel_many(cluster, filters, reason="cancelled from the dashboard")
            )
        elif action_name == "resume":
            result = await run_in_threadpool(lambda: resume_many(cluster, filters))
        else:
            raise _Refused(400, "Unknown bulk action: choose cancel or resume.")
        return render(
            request,
            "bulk.html",
            action=action_name,
            filters=filters,
            query=filters.to_strings(),
            counts=result.per_shard,
            total=result.total,
            result=result,
        )

    def login_page(request: Request) -> Response:
        return render(request, "login.html", failed=False)

    async def login(request: Request) -> Response:
        form = await _form(request)
        if auth is None or auth.kind != "token":
            raise _Refused(404, "There is nothing to sign in to.")
        if security.cross_site(request.headers) or not security.csrf_ok(
            key, request.cookies.get(security.CSRF_COOKIE), form.get(security.CSRF_FIELD)
        ):
            raise _Refused(403, "Refused: missing or wrong CSRF token. Reload the page and retry.")
        if not auth.token_matches(form.get("token", "")):
            return await run_sync(lambda: render(request, "login.html", 401, failed=True))
        response = RedirectResponse(_path(request, "overview"), status_code=303)
        response.set_cookie(
            security.AUTH_COOKIE,
            auth.cookie_value(key),
            httponly=True,
            samesite="strict",
            path=_cookie_path(request),
        )
        return response

    # -- wiring -------------------------------------------------------------------------------

    def page(endpoint: Any) -> Any:
        """Errors a user can act on become pages, with the right status."""

        async def wrapped(request: Request) -> Response:
            status, message = 200, ""
            try:
                if _is_coroutine(endpoint):
                    return await endpoint(request)  # type: ignore[no-any-return]
                return await run_sync(lambda: endpoint(request))
            except _Refused as exc:
                status, message = exc.status, exc.message
            except WorkflowNotFound as exc:
                status, message = 404, str(exc)
            except (ValueError, WorkflowError) as exc:
                status, message = 400, str(exc)
            except ShardflowError as exc:
                log.warning("dashboard: %s", scrub_dsns(str(exc), dsns))
                status, message = 503, str(exc)
            return await run_sync(lambda: error_page(request, status, message))

        return wrapped

    static_dir = resources.files("shardflow.ui").joinpath("static")
    routes = [
        Route(PATHS["overview"], page(overview)),
        Route(PATHS["workflows"], page(workflows)),
        Route(PATHS["workflow"], page(workflow)),
        Route(PATHS["failures"], page(failures_page)),
        Route(PATHS["confirm"], page(confirm)),
        Route(PATHS["action"], page(action), methods=["POST"]),
        Route(PATHS["bulk"], page(bulk_preview)),
        Route(PATHS["bulk_run"], page(bulk_run), methods=["POST"]),
        Route(PATHS["login_page"], page(login_page)),
        Route(PATHS["login"], page(login), methods=["POST"]),
        Mount(PATHS["static"], StaticFiles(directory=str(static_dir))),
    ]
    app = Starlette(routes=routes)
    app.state.cluster = cluster
    return Guarded(app, auth=auth, key=key, allowed_hosts=allowed_hosts)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form, first value of each field (no multipart: no file uploads)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _Refused(413, "The form is too large.")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise _Refused(400, "The form is not UTF-8.") from None
    return {k: v[0] for k, v in parsed.items()}


async def run_sync(call: Any) -> Response:
    result: Response = await run_in_threadpool(call)
    return result


def _is_coroutine(endpoint: Any) -> bool:
    return inspect.iscoroutinefunction(endpoint)


def _path(request: Request, route: str) -> str:
    root: str = request.scope.get("root_path", "")
    path = PATHS[route]
    return root + path if root and path != "/" else (root + "/" if root else path)


def _cookie_path(request: Request) -> str:
    root = request.scope.get("root_path", "")
    return root or "/"
