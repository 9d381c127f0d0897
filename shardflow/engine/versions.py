"""Which version of an app's code a worker runs: recorded on every attempt it starts.

:func:`app_version` answers, in this order: the app's own ``App(version=...)``; the
version of the installed distribution that holds the app's workflow modules (the
package version, e.g. ``1.4.2``); else ``code-`` and 12 hex digits of a SHA-256 over the
names and source code of the registered workflow functions, so that two workers running
different workflow code record different versions even when nobody set one.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect

from shardflow.engine.app import App

__all__ = ["app_version", "code_hash"]


def app_version(app: App, configured: str | None = None) -> str:
    """The version a worker of ``app`` records on each attempt: ``configured`` (the
    worker's ``--app-version`` or the YAML's ``worker.app_version``), else the app's own
    ``version``, else its package version, else a hash of its workflow code."""
    if configured:
        return configured
    if app.version is not None:
        return app.version
    return _package_version(app) or code_hash(app)


def code_hash(app: App) -> str:
    """``code-`` + 12 hex digits of a SHA-256 of the registered workflows' code."""
    digest = hashlib.sha256()
    for name in sorted(app.workflows):
        fn = app.workflows[name].fn
        digest.update(name.encode("utf-8") + b"\0")
        try:
            digest.update(inspect.getsource(fn).encode("utf-8"))
        except (OSError, TypeError):  # no source file (built in the REPL, a C function)
            code = getattr(fn, "__code__", None)
            digest.update(repr(fn).encode() if code is None else code.co_code)
        digest.update(b"\0")
    return "code-" + digest.hexdigest()[:12]


def _package_version(app: App) -> str | None:
    """The version of the one installed distribution that holds every workflow module
    of ``app``, or None (no workflows, a script, a module outside any distribution)."""
    tops = {wf.fn.__module__.partition(".")[0] for wf in app.workflows.values()}
    if not tops or "__main__" in tops:
        return None
    owners = _distributions()
    dists = {d for top in tops for d in owners.get(top, [])}
    if len(dists) != 1 or any(top not in owners for top in tops):
        return None
    try:
        return importlib.metadata.version(dists.pop())
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """Top-level module -> the distributions that install it (read once: a scan of every
    installed distribution's file list takes about 0.1 s)."""
    return dict(importlib.metadata.packages_distributions())
