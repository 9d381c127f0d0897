"""Async workflows: their run on the worker's event loop (``run``), their primitives
(``primitives``: ``sleep_async``, ``recv_async``, ...) and the async client (``client``:
``connect_async``, ``AsyncCluster``)."""

from __future__ import annotations
