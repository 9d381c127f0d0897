"""Keeping DSN secrets out of output: :func:`redact_dsn`, :func:`scrub_dsns`, and
:func:`dsn_problem` (what is wrong with a DSN, said without quoting it).

A secret is the value of every connection parameter whose name ends in ``password``
(``password``, ``sslpassword``, and any such parameter a later libpq adds), wherever it
is written: the ``user:secret@`` part of a URL, a URL query parameter, or a key=value
pair. Both the text as written and its percent-decoded form count, so a message that
quotes either is scrubbed. Pure string handling, no I/O: usable from every layer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

MASK = "***"
# A secret this short would mangle unrelated words of every message it is scrubbed from.
_MIN_SCRUBBED_LENGTH = 3

# `sslpassword = 'it''s'`, `password=x`: key=value pairs whose key ends in "password".
_KEYWORD_SECRET = re.compile(
    r"(?P<key>\b[A-Za-z_]*password\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s']\S*)",
    re.IGNORECASE,
)
# `&sslpassword=x` in a URL query.
_QUERY_SECRET = re.compile(r"(?P<key>(?:^|&)[^&=]*password=)(?P<value>[^&]*)", re.IGNORECASE)
# `scheme://user:secret@`: a URL's password anywhere in free text (a driver message).
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<value>[^@\s]+)@")


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with every password-like parameter replaced by ``***``.

    Handles URLs (``postgresql://user:secret@host/db?sslpassword=...``), percent-encoded
    or not, and key=value strings (``host=h password=secret sslpassword='a b'``).
    """
    if "://" not in dsn:
        return _KEYWORD_SECRET.sub(rf"\g<key>{MASK}", dsn)
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable dsn>"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostport}"
    query = _QUERY_SECRET.sub(rf"\g<key>{MASK}", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def dsn_secrets(dsn: str) -> set[str]:
    """Every password-like value in ``dsn``: as written, and decoded/unquoted.

    Works on DSNs libpq cannot parse too (a raw ``%`` in a URL password), which are
    exactly the ones whose parse errors quote the secret.
    """
    found: set[str] = set()
    try:
        parsed = conninfo_to_dict(dsn)
    except Exception:  # any parse failure: fall back to reading the text ourselves
        parsed = {}
    found.update(str(v) for k, v in parsed.items() if k.lower().endswith("password") and v)
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
        except ValueError:
            parts = None
        if parts is not None:
            userinfo, at, _ = parts.netloc.rpartition("@")
            if at and ":" in userinfo:
                raw = userinfo.split(":", 1)[1]
                found |= {raw, unquote(raw)}
            for match in _QUERY_SECRET.finditer(parts.query):
                raw = match.group("value")
                found |= {raw, unquote(raw)}
    else:
        for match in _KEYWORD_SECRET.finditer(dsn):
            raw = match.group("value")
            found.add(raw)
            if len(raw) >= 2 and raw.startswith("'") and raw.endswith("'"):
                found.add(re.sub(r"\\(.)", r"\1", raw[1:-1]))
    return {secret for secret in found if secret}


def scrub_dsns(text: str, dsns: Iterable[str] = ()) -> str:
    """``text`` with every given DSN redacted, their secrets masked, and any other
    password-like parameter or URL password masked too.

    The last line of defence for error messages and logs: shardflow's own messages do
    not quote DSNs, but a driver's message might.
    """
    for dsn in dsns:
        if dsn and dsn in text:
            text = text.replace(dsn, redact_dsn(dsn))
        # Longest first: a secret that contains another is masked whole.
        for secret in sorted(dsn_secrets(dsn), key=len, reverse=True):
            if len(secret) >= _MIN_SCRUBBED_LENGTH:
                text = text.replace(secret, MASK)
    text = _URL_USERINFO.sub(rf"\g<head>{MASK}@", text)
    return _KEYWORD_SECRET.sub(rf"\g<key>{MASK}", text)


def dsn_problem(dsn: str) -> str | None:
    """What is wrong with ``dsn``, worded without quoting it; None if libpq can parse it.

    libpq's own parse errors quote the offending token (a password, often), so they are
    replaced, never passed on.
    """
    if not dsn.strip():
        return "is empty"
    if "://" in dsn and dsn.split("://", 1)[0] not in ("postgresql", "postgres"):
        return "must start with postgresql:// or postgres://"
    try:
        conninfo_to_dict(dsn)
    except (psycopg.Error, ValueError):
        if "://" in dsn:
            return (
                "is not a valid postgresql:// URL (percent-encode special characters in"
                " the user name and password, e.g. % as %25)"
            )
        return (
            "is not a valid key=value connection string (known libpq keywords only;"
            " quote values with spaces in single quotes)"
        )
    return None
