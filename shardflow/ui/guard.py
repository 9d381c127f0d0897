"""The dashboard's outer layer: the host check, authentication and security headers
around every request (:class:`Guarded`)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from shardflow.ui import security

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class Guarded:
    """Host check, authentication and security headers around the app."""

    def __init__(
        self,
        app: Starlette,
        *,
        auth: security.Auth | None,
        key: bytes,
        allowed_hosts: tuple[str, ...] | None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.key = key
        self.allowed_hosts = allowed_hosts

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self.allowed_hosts is not None and not security.host_allowed(
            request.headers.get("host", ""), self.allowed_hosts
        ):
            await PlainTextResponse("unknown host", status_code=421)(scope, receive, send)
            return
        relative = scope["path"][len(scope.get("root_path", "")) :] or "/"
        public = relative.startswith("/static/") or relative == "/login"
        if (
            self.auth is not None
            and not public
            and not self.auth.allows(request.headers, request.cookies, self.key)
        ):
            await self._challenge(request)(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    # Workflow IDs travel in URLs: do not hand them to other sites.
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _challenge(self, request: Request) -> Response:
        assert self.auth is not None
        if self.auth.kind == "basic":
            return PlainTextResponse(
                "authentication required",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="shardflow", charset="UTF-8"'},
            )
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            login = request.scope.get("root_path", "") + "/login"
            return RedirectResponse(login, status_code=303)
        return PlainTextResponse("authentication required", status_code=401)
