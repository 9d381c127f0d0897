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

from shardflow.testing.faults.proxied import ProxiedCluster, dsn_address, proxied_cluster, via_proxy
from shardflow.testing.faults.proxy import FaultProxy
from shardflow.testing.faults.server import (
    data_directory,
    held_lock,
    live_threads,
    postmaster_pid,
    read_only_window,
    restart_server,
    server_processes,
    set_read_only,
    stopped_server,
    terminate_sessions,
    wait_for_server,
)

__all__ = [
    "FaultProxy",
    "ProxiedCluster",
    "data_directory",
    "dsn_address",
    "held_lock",
    "live_threads",
    "postmaster_pid",
    "proxied_cluster",
    "read_only_window",
    "restart_server",
    "server_processes",
    "set_read_only",
    "stopped_server",
    "terminate_sessions",
    "via_proxy",
    "wait_for_server",
]
