"""Who may see the dashboard and who may act through it.

- :class:`Auth`: a bearer token or HTTP basic credentials, read from an environment
  variable (never from the command line, where ``ps`` shows it). A browser signs in with
  the token once (``/login``); the cookie holds an HMAC of it, not the token.
- CSRF: every action is a POST whose form carries a token, an HMAC of a random per-browser
  cookie under a per-app secret. A cross-site form cannot read the cookie, so it cannot
  forge the token; a POST whose ``Sec-Fetch-Site`` says it came from another site is
  refused too.
- Host check: a dashboard without auth answers only to loopback host names, so a web
  page cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from shardflow.errors import ConfigError

CSRF_COOKIE = "shardflow_ui_csrf"
AUTH_COOKIE = "shardflow_ui_auth"
CSRF_FIELD = "csrf_token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class Auth:
    """``kind`` is ``"token"`` or ``"basic"``; ``secret`` the token or ``user:password``."""

    kind: str
    secret: str = field(repr=False)

    @classmethod
    def from_spec(cls, spec: str, environ: Mapping[str, str] | None = None) -> Auth:
        """``token:VARIABLE`` or ``basic:VARIABLE`` (the variable holds ``user:password``).

        Raises ConfigError naming the variable, never its value."""
        env = os.environ if environ is None else environ
        kind, sep, variable = spec.partition(":")
        if not sep or kind not in ("token", "basic") or not variable:
            raise ConfigError(
                f"--auth {spec[:60]!r}: expected token:VARIABLE or basic:VARIABLE"
                " (the environment variable holding the token or user:password)"
            )
        value = env.get(variable, "")
        if not value:
            raise ConfigError(f"--auth {kind}: environment variable {variable} is not set or empty")
        if kind == "basic" and ":" not in value:
            raise ConfigError(f"--auth basic: {variable} must hold user:password")
        if kind == "token" and len(value) < 16:
            raise ConfigError(
                f"--auth token: the token in {variable} is shorter than 16 characters"
            )
        return cls(kind, value)

    def allows(self, headers: Mapping[str, str], cookies: Mapping[str, str], key: bytes) -> bool:
        """Whether a request carries these credentials (header, or the sign-in cookie)."""
        header = headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if self.kind == "basic":
            if scheme.lower() != "basic":
                return False
            try:
                given = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return hmac.compare_digest(given.encode(), self.secret.encode())
        if scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self.secret.encode()
        ):
            return True
        cookie = cookies.get(AUTH_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie, self.cookie_value(key))

    def token_matches(self, given: str) -> bool:
        return self.kind == "token" and hmac.compare_digest(given.encode(), self.secret.encode())

    def cookie_value(self, key: bytes) -> str:
        return hmac.new(key, b"auth\0" + self.secret.encode(), hashlib.sha256).hexdigest()


def new_key() -> bytes:
    """A per-app secret for CSRF tokens and the sign-in cookie."""
    return secrets.token_bytes(32)


def new_browser_id() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(key: bytes, browser_id: str) -> str:
    return hmac.new(key, b"csrf\0" + browser_id.encode(), hashlib.sha256).hexdigest()


def csrf_ok(key: bytes, browser_id: str | None, given: str | None) -> bool:
    if not browser_id or not given:
        return False
    return hmac.compare_digest(csrf_token(key, browser_id), given)


def cross_site(headers: Mapping[str, str]) -> bool:
    """A request a browser says came from another site (``Sec-Fetch-Site``)."""
    return headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


def host_allowed(host_header: str, allowed: tuple[str, ...]) -> bool:
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host.split("]", 1)[0] + "]"
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in allowed
