"""A TCP proxy that delays, freezes, resets or black-holes the traffic to one server
(see :mod:`shardflow.testing.faults`)."""

from __future__ import annotations

import collections
import contextlib
import logging
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

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
