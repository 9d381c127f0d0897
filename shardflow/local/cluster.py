"""A local sharded cluster: N :class:`LocalServer` s under one directory.

Layout of ``DIR``::

    DIR/cluster.yaml         shardflow configuration (one shard per server; mode 0600:
                             its DSNs hold the superuser's password)
    DIR/superuser.password   the ``postgres`` superuser's password on every server (0600)
    DIR/servers.json         ports, data directories, binaries (see shardflow.local.state)
    DIR/.lock                held during `up` and `down`
    DIR/shard0/data/         PostgreSQL data directory of shard0 (log: server.log inside)
    DIR/shard1/data/ ...

Under root, when the server user cannot reach ``DIR``, the data directories live in a
fresh directory of that user's under the temporary directory instead (``servers.json``
records it; :meth:`LocalCluster.destroy` removes it). No existing directory's
permissions are ever changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from shardflow.errors import EmbeddedServerError
from shardflow.local.binaries import find_pg_bindir
from shardflow.local.ports import pick_free_ports
from shardflow.local.provision import DATABASE as DATABASE  # also imported from here
from shardflow.local.provision import (
    copy_installation,
    run_parallel,
    start_with_database,
)
from shardflow.local.server import PASSWORD_FILE, LocalServer, ensure_password_file
from shardflow.local.state import (
    CONFIG_FILE,
    STATE_FILE,
    ClusterState,
    ServerRecord,
    add_shard_to_yaml,
    read_state,
    write_cluster_yaml,
    write_state,
)
from shardflow.local.unprivileged import is_reachable, make_server_root, server_user

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """One server of a local cluster, as :meth:`LocalCluster.status` sees it."""

    name: str
    port: int
    running: bool
    data_dir: Path
    dsn: str


class LocalCluster:
    """Local PostgreSQL servers, one per shard, under ``directory``.

    ``up`` creates or restarts them; ``down`` stops them. The directory keeps everything,
    so another process (or a later ``shardflow dev up``) finds the same cluster::

        cluster = LocalCluster("/tmp/dev")
        config_path = cluster.up(shards=3)
        ...
        cluster.down()

    Also a context manager that calls :meth:`down` on exit.
    """

    def __init__(self, directory: str | os.PathLike[str], *, start_timeout: float = 60.0) -> None:
        self.directory = Path(directory).absolute()
        self.start_timeout = start_timeout

    def __repr__(self) -> str:
        return f"LocalCluster({str(self.directory)!r})"

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.down()

    @property
    def config_path(self) -> Path:
        """``DIR/cluster.yaml``."""
        return self.directory / CONFIG_FILE

    @property
    def password_file(self) -> Path:
        """``DIR/superuser.password``: the superuser's password (mode 0600)."""
        return self.directory / PASSWORD_FILE

    @property
    def state_path(self) -> Path:
        """``DIR/servers.json``."""
        return self.directory / STATE_FILE

    @property
    def servers(self) -> tuple[LocalServer, ...]:
        """The servers recorded in ``servers.json``, in shard order (empty before ``up``).

        Fresh objects each time: the file is the truth, another process may have moved a
        server to another port.
        """
        state = read_state(self.state_path)
        return () if state is None else self._servers_of(state)

    def up(
        self,
        shards: int = 3,
        *,
        name: str = "local",
        slots: int = 4096,
        settings: Mapping[str, str] | None = None,
        migrate: bool = True,
    ) -> Path:
        """Start the cluster (creating it on first use) and return ``cluster.yaml``'s path.

        On a directory that already holds a cluster, starts the servers that are stopped,
        on their old ports when free (otherwise on new ones, and both files are rewritten),
        and leaves running ones alone. ``shards``, ``name`` and ``slots`` must then match the
        existing cluster. ``settings`` (``postgresql.conf`` parameters) are remembered and
        apply to servers started by this call. ``migrate`` applies the shardflow schema.
        """
        if shards < 1:
            raise ValueError("a cluster needs at least one shard")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            self._start_servers(shards, name, slots, settings)
        if migrate:
            # Outside the lock: the migrator serializes on advisory locks of its own.
            self._migrate()
        return self.config_path

    def down(self) -> None:
        """Stop every server (fast shutdown). No-op if none runs or there is no cluster."""
        if not self.state_path.exists():
            return
        with self._exclusive():
            run_parallel(self.servers, lambda server: server.stop("fast"))

    def status(self) -> list[ServerStatus]:
        """Name, port, and whether it runs, for every server."""
        state = read_state(self.state_path)
        if state is None:
            return []
        return [
            ServerStatus(
                name=record.shard,
                port=server.port,
                running=server.is_running(),
                data_dir=server.data_dir,
                dsn=server.dsn(DATABASE),
            )
            for record, server in zip(state.servers, self._servers_of(state), strict=True)
        ]

    def admin_dsns(self) -> list[str]:
        """DSNs of the ``postgres`` database on every server, in shard order (password
        included: redact before printing)."""
        return [server.dsn("postgres") for server in self.servers]

    def new_server(self, name: str) -> LocalServer:
        """A server that is not part of the cluster's state, set up like its servers
        (binaries, password, a data directory the server user can reach), for callers
        that grow a cluster by hand (the demo's rebalancing act). Call ``init()``."""
        state = read_state(self.state_path)
        if state is None:
            raise EmbeddedServerError(f"no local cluster in {self.directory}; run up() first")
        base = self.directory if state.data_root is None else state.data_root
        return LocalServer(
            base / name / "data",
            bindir=state.bindir,
            settings=state.settings,
            start_timeout=self.start_timeout,
            password_file=self.password_file,
        )

    def add_shard(self, *, migrate: bool = True) -> tuple[str, Path]:
        """Grow the cluster by one server: start it, create its database, add it (weight 1)
        to ``cluster.yaml`` and migrate it. It joins with no slots: ``shardflow rebalance
        plan``/``apply`` on the grown file move its share onto it. Returns the new shard's
        name and the config path."""
        with self._exclusive():
            state = read_state(self.state_path)
            if state is None:
                raise EmbeddedServerError(
                    f"no local cluster in {self.directory}; start one with `shardflow dev up`"
                )
            taken = {record.shard for record in state.servers}
            index = len(state.servers)
            while f"shard{index}" in taken:
                index += 1
            shard = f"shard{index}"
            base = "" if state.data_root is None else f"{state.data_root}/"
            record = ServerRecord(shard, pick_free_ports(1)[0], f"{base}{shard}/data")
            state = dataclasses.replace(state, servers=(*state.servers, record))
            write_state(self.state_path, state)
            server = self._servers_of(state)[-1]
            self._bring_up([server])
            if server.port != record.port:
                moved = dataclasses.replace(record, port=server.port)
                state = dataclasses.replace(state, servers=(*state.servers[:-1], moved))
                write_state(self.state_path, state)
            add_shard_to_yaml(self.config_path, shard, server.dsn(DATABASE))
        if migrate:
            self._migrate()
        return shard, self.config_path

    def destroy(self) -> None:
        """Stop every server and delete the cluster: its directory and data directories."""
        state = read_state(self.state_path)
        self.down()
        if state is not None and state.data_root is not None:
            shutil.rmtree(state.data_root, ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # One `up` or `down` at a time per directory, across processes: two concurrent
        # `up`s would otherwise run initdb twice on the same data directory.
        with (self.directory / LOCK_FILE).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _start_servers(
        self, shards: int, name: str, slots: int, settings: Mapping[str, str] | None
    ) -> None:
        existing = read_state(self.state_path)
        if existing is None:
            ensure_password_file(self.password_file)
            state = self._new_state(shards, name, slots, settings)
        else:
            state = self._reuse_state(existing, shards, name, slots, settings)
        # Recorded before anything starts, so `down` finds servers even if `up` dies midway.
        write_state(self.state_path, state)

        servers = self._servers_of(state)
        self._bring_up(servers)
        moved = tuple(
            dataclasses.replace(record, port=server.port)
            for record, server in zip(state.servers, servers, strict=True)
        )
        ports_moved = moved != state.servers
        if ports_moved:
            state = dataclasses.replace(state, servers=moved)
            write_state(self.state_path, state)
        # Rewriting an unchanged file would only drop the user's comments in it.
        if existing is None or ports_moved or not self.config_path.exists():
            dsns = [
                (r.shard, server.dsn(DATABASE)) for r, server in zip(moved, servers, strict=True)
            ]
            write_cluster_yaml(self.config_path, state.name, state.slots, dsns)

    def _new_state(
        self, shards: int, name: str, slots: int, settings: Mapping[str, str] | None
    ) -> ClusterState:
        bindir = find_pg_bindir()
        user = server_user()
        data_root: Path | None = None
        if user is not None and not is_reachable(self.directory, user):
            # Never loosen a directory above ours: give the server user a place of its own.
            data_root = make_server_root(user, f"shardflow-{name}-")
        if user is not None and not is_reachable(bindir, user):
            bindir = copy_installation(bindir, data_root or self.directory)
        base = "" if data_root is None else f"{data_root}/"
        records = tuple(
            ServerRecord(f"shard{k}", port, f"{base}shard{k}/data")
            for k, port in enumerate(pick_free_ports(shards))
        )
        return ClusterState(name, slots, bindir, records, dict(settings or {}), data_root)

    def _reuse_state(
        self,
        state: ClusterState,
        shards: int,
        name: str,
        slots: int,
        settings: Mapping[str, str] | None,
    ) -> ClusterState:
        asked = {"shards": shards, "name": name, "slots": slots}
        has = {"shards": len(state.servers), "name": state.name, "slots": state.slots}
        different = [key for key in asked if asked[key] != has[key]]
        if different:
            wanted = ", ".join(f"{key}={asked[key]!r}" for key in different)
            held = ", ".join(f"{key}={has[key]!r}" for key in different)
            raise EmbeddedServerError(
                f"{self.directory} already holds a local cluster with {held}; asked for "
                f"{wanted}. Start it with its existing values; add a shard with `shardflow"
                f" dev add-shard --dir {self.directory}` (LocalCluster.add_shard()); or stop"
                " it (`shardflow dev down`) and remove the directory for a new cluster."
            )
        bindir = state.bindir
        if not bindir.is_dir():
            # Data directories only open with the major version that created them;
            # if that one is gone, pg_ctl's error says so.
            bindir = find_pg_bindir()
            logger.warning("%s is gone; using PostgreSQL binaries in %s", state.bindir, bindir)
        new_settings = state.settings if settings is None else dict(settings)
        return dataclasses.replace(state, bindir=bindir, settings=new_settings)

    def _servers_of(self, state: ClusterState) -> tuple[LocalServer, ...]:
        return tuple(
            LocalServer(
                self.directory / record.data_dir,
                record.port,
                bindir=state.bindir,
                settings=state.settings,
                start_timeout=self.start_timeout,
                password_file=self.password_file,
            )
            for record in state.servers
        )

    def _bring_up(self, servers: Sequence[LocalServer]) -> None:
        running_before = [server.is_running() for server in servers]
        try:
            run_parallel(servers, start_with_database)
        except BaseException:
            # Do not leave half a cluster running behind an exception nobody will `down`.
            started_here = [s for s, was in zip(servers, running_before, strict=True) if not was]
            run_parallel(started_here, lambda server: server.stop("fast"))
            raise

    def _migrate(self) -> None:
        # Imported here: creating and starting servers needs none of the config loader,
        # router and migrator stack, so `migrate=False` works without it.
        from shardflow.config import load
        from shardflow.sql.migrator import migrate_cluster

        migrate_cluster(load(self.config_path))
