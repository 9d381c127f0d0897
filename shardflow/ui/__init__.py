"""The web dashboard: ``shardflow ui``, or mount :func:`create_app` in an ASGI app.

Needs the optional ``ui`` extra (``pip install 'shardflow[ui]'``): Starlette, Jinja2 and
uvicorn. See docs/dashboard.md.
"""

from __future__ import annotations

from shardflow.ui.app import create_app
from shardflow.ui.security import Auth

__all__ = ["Auth", "create_app"]
