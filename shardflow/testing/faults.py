"""Fault injection for tests: a TCP proxy per shard, and server-level faults.

:class:`FaultProxy` sits between clients and one PostgreSQL server and can delay, freeze,
reset or black-hole the traffic. One thread per proxy runs a ``selectors`` loop; control
calls are thread-safe and take effect before they return.

What a frozen proxy looks like to a client: its kernel still accepts and ACKs bytes (the
proxy's socket buffers fill, then the window closes), so the peer is silent but alive at the
TCP level, exactly like a SIGSTOPped server. TCP keepalives and ``tcp_user_timeout`` cannot
notice that; only application-level deadlines can. (Dropping packets outright needs
netfilter in a network namespace, which a test suite on a shared machine should not touch.)

Server-level faults for servers on this machine (test clusters started by
:mod:`shardflow.local`): :func:`stopped_server` (SIGSTOP/SIGCONT the postmaster and every
backend), :func:`read_only_window` (the server refuses writes and drops its sessions, as
after a failover), :func:`held_lock` (a long transaction holding a table lock) and
:func:`restart_server` (``pg_ctl restart -m fast``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import yaml
from psycopg import sql

if TYPE_CHECKING:
    from shardflow.local.server import LocalServer

log = logging.getLogger(__name__)

_CHUNK = 65536
# Stop reading a side once this much is waiting to be written to the other side.
_BACKPRESSURE = 1 << 20


@dataclass(eq=False)
class _Link:
    """One client connection and, once forwarding may start, its upstream connection."""

    client: socket.socket
    upstream: socket.socket | None = None
    # Chunks waiting to go out: (monotonic time they are due, bytes).
    to_upstream: collections.deque[tuple[float, bytes]] = field(default_factory=collections.deque)
    to_client: collections.deque[tuple[float, bytes]] = field(default_factory=collections.deque)
    # Accepted while black-holed: nothing is forwarded until heal().
    held: bool = False
    eof: bool = False


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``, with faults on demand.

    ``delay(s)`` adds ``s`` seconds to every chunk in each direction; ``freeze()`` stops
    forwarding in both directions (sockets stay open, new connections are accepted and
    frozen too); ``thaw()`` resumes; ``reset()`` closes every current connection with a
    TCP RST; ``blackhole()`` freezes and, on top, connections accepted meanwhile are not
    even connected upstream; ``heal()`` undoes all of it. ``close()`` stops the thread and
    closes every socket.
    """

    def __init__(self, target_host: str, target_port: int, *, name: str = "proxy") -> None:
        self.target = (target_host, target_port)
        self.name = name
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._state = threading.Condition()
        self._delay = 0.0
        self._frozen = False
        self._blackholed = False
        self._resets_asked = 0
        self._resets_done = 0
        self._changes = 0
        self._seen = 0
        self._closing = False
        self._links: list[_Link] = []
        self.connections_accepted = 0
        self._thread = threading.Thread(
            target=self._loop, name=f"shardflow-fault-{name}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return (
            f"FaultProxy({self.name}: 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]})"
        )

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- controls ---------------------------------------------------------------------

    def delay(self, seconds: float) -> None:
        self._set(delay=max(0.0, seconds))

    def freeze(self) -> None:
        self._set(frozen=True)

    def thaw(self) -> None:
        self._set(frozen=False)

    def blackhole(self) -> None:
        self._set(frozen=True, blackholed=True)

    def heal(self) -> None:
        self._set(delay=0.0, frozen=False, blackholed=False)

    def reset(self, timeout: float = 10.0) -> None:
        """Close every current connection with RST; returns once they are closed."""
        with self._state:
            self._resets_asked += 1
            wanted = self._resets_asked
            self._poke()
            if not self._state.wait_for(
                lambda: self._resets_done >= wanted or self._closing, timeout
            ):
                raise TimeoutError(f"{self!r}: reset not done after {timeout}s")

    @property
    def open_connections(self) -> int:
        with self._state:
            return len(self._links)

    def close(self) -> None:
        """Stop forwarding, close every socket and join the thread. Idempotent."""
        with self._state:
            self._closing = True
            self._poke()
        self._thread.join(10)
        if self._thread.is_alive():  # pragma: no cover - would be a bug in _loop
            raise RuntimeError(f"{self!r}: forwarding thread did not stop")

    def _set(self, **changes: Any) -> None:
        """Change the fault state; returns once the loop runs with it (so nothing is
        forwarded against a freeze that already returned)."""
        with self._state:
            if self._closing:
                raise RuntimeError(f"{self!r} is closed")
            for key, value in changes.items():
                setattr(self, f"_{key}", value)
            self._changes += 1
            wanted = self._changes
            self._poke()
            if not self._state.wait_for(lambda: self._seen >= wanted or self._closing, 10):
                raise TimeoutError(f"{self!r}: the forwarding loop did not take the change")

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    # -- the forwarding loop (only this thread touches the sockets) -----------------------

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            while True:
                with self._state:
                    closing = self._closing
                    delay, frozen, blackholed = self._delay, self._frozen, self._blackholed
                    reset = self._resets_asked > self._resets_done
                    asked = self._resets_asked
                    self._seen = self._changes
                    self._state.notify_all()
                if closing:
                    break
                if reset:
                    for link in list(self._links):
                        self._drop(link, rst=True)
                    with self._state:
                        self._resets_done = asked
                        self._state.notify_all()
                if not blackholed:
                    for link in list(self._links):
                        if link.held:
                            link.held = False
                            self._connect_upstream(link)
                timeout = self._register(sel, frozen)
                for key, events in sel.select(timeout):
                    self._ready(key.data, key.fileobj, events, delay, blackholed)
                if not frozen:
                    now = time.monotonic()
                    for link in list(self._links):
                        self._flush(link, now)
        except Exception:  # pragma: no cover - logged, then everything is closed
            log.exception("%r: forwarding loop failed", self)
        finally:
            for link in list(self._links):
                self._drop(link, rst=False)
            sel.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()
            with self._state:
                self._closing = True
                self._state.notify_all()

    def _register(self, sel: selectors.BaseSelector, frozen: bool) -> float | None:
        """(Re)build the selector's interests; returns how long select may block."""
        for key in list(sel.get_map().values()):
            sel.unregister(key.fileobj)
        sel.register(self._listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        due: float | None = None
        now = time.monotonic()
        for link in self._links:
            for sock, outgoing, incoming in (
                (link.client, link.to_client, link.to_upstream),
                (link.upstream, link.to_upstream, link.to_client),
            ):
                if sock is None:
                    continue
                events = 0
                if not frozen and not link.eof and _size(incoming) < _BACKPRESSURE:
                    events |= selectors.EVENT_READ
                if not frozen and outgoing:
                    if outgoing[0][0] <= now:
                        events |= selectors.EVENT_WRITE
                    else:
                        due = outgoing[0][0] if due is None else min(due, outgoing[0][0])
                if events:
                    sel.register(sock, events, link)
        return None if due is None else max(0.0, due - now)

    def _ready(self, data: Any, sock: Any, events: int, delay: float, blackholed: bool) -> None:
        if data == "wake":
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
            return
        if data == "accept":
            self._accept(blackholed)
            return
        link: _Link = data
        if link not in self._links or not events & selectors.EVENT_READ:
            return
        try:
            chunk = sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self._drop(link, rst=True)
            return
        if not chunk:
            # One side hung up: pass on what is queued, then close both.
            link.eof = True
            return
        queue = link.to_upstream if sock is link.client else link.to_client
        queue.append((time.monotonic() + delay, chunk))

    def _accept(self, blackholed: bool) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        client.setblocking(False)
        link = _Link(client, held=blackholed)
        with self._state:
            self._links.append(link)
            self.connections_accepted += 1
        if not blackholed:
            self._connect_upstream(link)

    def _connect_upstream(self, link: _Link) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            # The server is down: the client sees its connection reset.
            self._drop(link, rst=True)
            return
        upstream.setblocking(False)
        link.upstream = upstream

    def _flush(self, link: _Link, now: float) -> None:
        for sock, queue in ((link.upstream, link.to_upstream), (link.client, link.to_client)):
            if sock is None:
                continue
            while queue and queue[0][0] <= now:
                due, chunk = queue[0]
                try:
                    sent = sock.send(chunk)
                except BlockingIOError:
                    break
                except OSError:
                    self._drop(link, rst=True)
                    return
                if sent < len(chunk):
                    queue[0] = (due, chunk[sent:])
                    break
                queue.popleft()
        if link.eof and not link.to_upstream and not link.to_client:
            self._drop(link, rst=False)

    def _drop(self, link: _Link, *, rst: bool) -> None:
        for sock in (link.client, link.upstream):
            if sock is None:
                continue
            if rst:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        with self._state:
            if link in self._links:
                self._links.remove(link)


def _size(queue: collections.deque[tuple[float, bytes]]) -> int:
    return sum(len(chunk) for _, chunk in queue)


# -- clusters behind proxies -----------------------------------------------------------


def via_proxy(dsn: str, proxy: FaultProxy) -> str:
    """``dsn`` (URL form) with its host and port replaced by the proxy's."""
    parts = urlsplit(dsn)
    if not parts.scheme:
        raise ValueError("via_proxy() needs a URL DSN (postgresql://...)")
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def dsn_address(dsn: str) -> tuple[str, int]:
    """Host and port of a URL DSN."""
    parts = urlsplit(dsn)
    return parts.hostname or "127.0.0.1", parts.port or 5432


@dataclass
class ProxiedCluster:
    """A cluster YAML whose shard DSNs go through one :class:`FaultProxy` per shard."""

    path: Path
    proxies: dict[str, FaultProxy]  # shard name -> proxy
    direct_dsns: dict[str, str]  # shard name -> the real DSN, for checks and admin work

    def heal_all(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()


def proxied_cluster(config_path: Path, out_path: Path) -> ProxiedCluster:
    """Write ``out_path``: the cluster YAML at ``config_path`` with every shard behind a
    new proxy. Close the result to stop the proxies."""
    doc = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    proxies: dict[str, FaultProxy] = {}
    direct: dict[str, str] = {}
    try:
        for shard in doc["shards"]:
            host, port = dsn_address(shard["dsn"])
            proxy = FaultProxy(host, port, name=shard["name"])
            proxies[shard["name"]] = proxy
            direct[shard["name"]] = shard["dsn"]
            shard["dsn"] = via_proxy(shard["dsn"], proxy)
    except BaseException:
        for proxy in proxies.values():
            proxy.close()
        raise
    out_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return ProxiedCluster(out_path, proxies, direct)


# -- server-level faults -------------------------------------------------------------------


def data_directory(dsn: str) -> Path:
    """The data directory of the server behind ``dsn`` (needs a superuser)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return Path(str(row[0]))


def postmaster_pid(data_dir: Path) -> int:
    """The postmaster's pid: the first line of ``postmaster.pid``."""
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def server_processes(postmaster: int) -> list[int]:
    """The postmaster and its children (backends, checkpointer, WAL writer, ...)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the ")" that ends the command name: state, ppid, ...
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == postmaster:
            children.append(int(entry.name))
    return [postmaster, *children]


@contextlib.contextmanager
def stopped_server(data_dir: Path) -> Iterator[list[int]]:
    """SIGSTOP the server (postmaster first, so it forks nothing new, then its children)
    for the duration of the block; SIGCONT everything on exit."""
    postmaster = postmaster_pid(data_dir)
    os.kill(postmaster, signal.SIGSTOP)
    stopped = [postmaster]
    try:
        for pid in server_processes(postmaster)[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield stopped
    finally:
        for pid in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def terminate_sessions(admin_dsn: str) -> int:
    """Terminate every client backend but this one; returns how many."""
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def set_read_only(admin_dsn: str, read_only: bool) -> None:
    """Make every new transaction on the server read-only (or not again)."""
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        if read_only:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        conn.execute("SELECT pg_reload_conf()")


@contextlib.contextmanager
def read_only_window(admin_dsn: str) -> Iterator[None]:
    """The server is read-only for the block, as a promoted replica may be for a moment:
    existing sessions are terminated (a failover drops them), new transactions are
    read-only. On exit it takes writes again and sessions are terminated once more, so
    no pooled session keeps a read-only default it picked up meanwhile."""
    set_read_only(admin_dsn, True)
    try:
        terminate_sessions(admin_dsn)
        yield
    finally:
        set_read_only(admin_dsn, False)
        terminate_sessions(admin_dsn)


@contextlib.contextmanager
def held_lock(
    dsn: str, table: str = "shardflow.workflow_status", mode: str = "SHARE"
) -> Iterator[psycopg.Connection[Any]]:
    """Hold ``LOCK TABLE <table> IN <mode> MODE`` in an open transaction on a separate
    connection for the block, like DDL or a long transaction would."""
    allowed = {"ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE",
               "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"}  # fmt: skip
    if mode not in allowed:
        raise ValueError(f"unknown lock mode {mode!r}")
    schema, _, name = table.rpartition(".")
    ident = sql.Identifier(schema, name) if schema else sql.Identifier(name)
    conn = psycopg.connect(dsn, connect_timeout=10)
    try:
        conn.execute(sql.SQL("LOCK TABLE {} IN {} MODE").format(ident, sql.SQL(mode)))
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


def restart_server(server: LocalServer) -> None:
    """Fast restart (``pg_ctl stop -m fast``, then start) of a server started by
    :mod:`shardflow.local`, on the same port with the settings it remembers. Every session
    is dropped; committed work survives."""
    server.stop("fast")
    server.start(port_fallback=False)


def wait_for_server(dsn: str, timeout: float = 30.0) -> None:
    """Wait until the server behind ``dsn`` accepts a query."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def live_threads(prefix: str = "shardflow-fault-") -> Sequence[threading.Thread]:
    """Proxy threads still running (tests assert none leak)."""
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]
