"""The HTTP side of a worker's metrics: ``/metrics``, ``/healthz`` and ``/readyz``
served from a background thread (see :mod:`shardflow.engine.metrics` for what is
collected)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from shardflow.engine.metrics import DEFAULT_SNAPSHOT_INTERVAL, WorkerCollector

if TYPE_CHECKING:
    from shardflow.engine.worker import Worker

log = logging.getLogger("shardflow.engine.metrics")

__all__ = ["MetricsServer", "serve_metrics"]


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a background thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        alive: Callable[[], bool] = lambda: True,
        ready: Callable[[], bool] = lambda: True,
        health: Callable[[], dict[str, dict[str, Any]]] = dict,
        health_key: str = "loops",
    ) -> None:
        """``/healthz`` answers ``{"alive": alive(), health_key: health()}``."""
        self.registry = registry
        handler = _handler(registry, alive, ready, health, health_key)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="shardflow-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(
    worker: Worker,
    port: int,
    host: str = "0.0.0.0",
    *,
    snapshot_interval: float = DEFAULT_SNAPSHOT_INTERVAL,
) -> MetricsServer:
    """Serve ``worker``'s metrics and probes on ``host:port`` (port 0: any free port)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(worker, snapshot_interval=snapshot_interval))
    ProcessCollector(registry=registry)
    server = MetricsServer(
        registry,
        host=host,
        port=port,
        alive=worker.alive,
        ready=worker.ready,
        health=worker.health,
    )
    log.info("serving metrics on %s:%d (/metrics, /healthz, /readyz)", host, server.port)
    return server.start()


def _handler(
    registry: CollectorRegistry,
    alive: Callable[[], bool],
    ready: Callable[[], bool],
    health: Callable[[], dict[str, dict[str, Any]]],
    health_key: str,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    body = generate_latest(registry)
                except Exception:
                    log.exception("collecting metrics failed")
                    self._reply(500, b"collecting metrics failed\n")
                    return
                self._reply(200, body, CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                # 503 when a background loop's thread died; the body reports every loop
                # (alive, seconds since progress, stalled, errors).
                ok = alive()
                report = json.dumps({"alive": ok, health_key: health()}, sort_keys=True)
                self._reply(200 if ok else 503, report.encode() + b"\n", "application/json")
            elif path == "/readyz":
                ok = ready()
                self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics: " + format, *args)

    return Handler
