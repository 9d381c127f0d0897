"""One local PostgreSQL server: a data directory, a loopback port, ``pg_ctl``.

The server listens on 127.0.0.1 only, trusts every loopback connection (no passwords: it
is a dev and test server) and has no Unix socket, which avoids ``/var/run/postgresql``
permissions and the 107-byte socket path limit of deep temporary directories.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import quote

from shardflow.errors import EmbeddedServerError
from shardflow.local.binaries import find_pg_bindir
from shardflow.local.ports import LOOPBACK, pick_free_ports, port_is_free
from shardflow.local.unprivileged import (
    ServerUser,
    ensure_traversable,
    is_reachable,
    make_owned_dir,
    server_user,
)

logger = logging.getLogger(__name__)

StopMode = Literal["smart", "fast", "immediate"]

DEFAULT_SETTINGS: Mapping[str, str] = MappingProxyType(
    {"max_connections": "200", "shared_buffers": "64MB"}
)
"""Server settings used unless overridden. Durability settings keep PostgreSQL's defaults."""

# Set by LocalServer itself; a caller changing them would break dsn() or expose the server.
_MANAGED_SETTINGS = frozenset({"port", "listen_addresses", "unix_socket_directories"})
SETTINGS_FILE = "shardflow.conf"
LOG_FILE = "server.log"
_START_ATTEMPTS = 5
_ACCESS_ATTEMPTS = 5
_LOG_TAIL_LINES = 30
_PG_HBA = """\
# Written by shardflow.local: TCP on loopback only, no passwords (a dev/test server).
host    all             all     127.0.0.1/32    trust
host    replication     all     127.0.0.1/32    trust
"""


class _PortInUse(EmbeddedServerError):
    """The server could not bind its port: someone else holds it."""


class _AccessLost(EmbeddedServerError):
    """The server user lost its way to the data directory while ``pg_ctl`` ran."""


class LocalServer:
    """A PostgreSQL server in ``data_dir`` listening on ``127.0.0.1:port``.

    ``port`` defaults to a free one. ``settings`` are ``postgresql.conf`` parameters on top
    of :data:`DEFAULT_SETTINGS` (tests pass ``fsync=off`` and friends for speed); they are
    written on every :meth:`start`. ``bindir`` defaults to :func:`find_pg_bindir`.
    Under root the programs run as an unprivileged user (see
    :mod:`shardflow.local.unprivileged`).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        bindir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        overridden = _MANAGED_SETTINGS.intersection(settings or {})
        if overridden:
            raise ValueError(f"LocalServer sets {', '.join(sorted(overridden))} itself")
        self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else pick_free_ports(1)[0]
        self.bindir = bindir if bindir is not None else find_pg_bindir()
        self.settings: Mapping[str, str] = {**DEFAULT_SETTINGS, **(settings or {})}
        self.start_timeout = start_timeout
        self._user: ServerUser | None = server_user()

    def __repr__(self) -> str:
        return f"LocalServer(data_dir={str(self.data_dir)!r}, port={self.port})"

    @property
    def log_file(self) -> Path:
        """The server log (``pg_ctl -l``), inside the data directory."""
        return self.data_dir / LOG_FILE

    @property
    def initialized(self) -> bool:
        """Whether ``data_dir`` already holds a database cluster."""
        return (self.data_dir / "PG_VERSION").is_file()

    def dsn(self, dbname: str = "postgres") -> str:
        """Connection URL for ``dbname`` as the ``postgres`` superuser (no password)."""
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{quote(dbname, safe='')}"

    def init(self) -> None:
        """Create the database cluster with ``initdb``, unless ``data_dir`` holds one."""
        if self.initialized:
            return
        make_owned_dir(self.data_dir, self._user)
        self._make_reachable()
        was_empty = not any(self.data_dir.iterdir())
        args = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--auth",
            "trust",
            "--username",
            "postgres",
            "--encoding",
            "UTF8",
            "--no-locale",
        ]
        if self.settings.get("fsync") == "off":
            # The caller does not want durability, so skip initdb's final fsync (~1 s).
            args.append("--no-sync")
        for _ in range(_ACCESS_ATTEMPTS):
            result = self._run(args, timeout=120)
            if result.returncode == 0 or not was_empty or not self._access_problem(result):
                break
            # initdb could not even remove what it had written; start over from empty.
            _remove_contents(self.data_dir)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"initdb failed for {self.data_dir} (exit {result.returncode}):\n"
                f"{_tail(result.stdout + result.stderr)}"
            )
        self._write_owned(self.data_dir / "pg_hba.conf", _PG_HBA)
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"\n# Added by shardflow.local\ninclude_if_exists = '{SETTINGS_FILE}'\n")
        logger.info("initialized PostgreSQL data directory %s", self.data_dir)

    def start(self, *, port_fallback: bool = True) -> None:
        """Start the server and wait until it accepts connections.

        If the port is taken and ``port_fallback`` is true, move to a free port (``port``
        changes); otherwise raise. No-op if the server already runs.
        """
        if self.is_running():
            return
        if not self.initialized:
            raise EmbeddedServerError(f"{self.data_dir} holds no database cluster; init() first")
        for _ in range(_START_ATTEMPTS):
            if port_fallback and not port_is_free(self.port):
                self._move_to_free_port()
            try:
                self._start_once()
            except _PortInUse:
                if not port_fallback:
                    raise
            except _AccessLost:
                pass
            else:
                return
        raise EmbeddedServerError(
            f"PostgreSQL in {self.data_dir} did not start in {_START_ATTEMPTS} attempts"
            " (port taken or data directory unreachable every time)"
        )

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server and wait until it is gone. No-op if it is not running.

        ``fast`` rolls back open transactions and checkpoints; ``immediate`` is a crash
        (recovery runs at the next start), which is what chaos tests want.
        """
        if not self.is_running():
            return
        result = self._pg_ctl("stop", "--mode", mode, "--timeout", str(int(self.start_timeout)))
        if result.returncode != 0 and self.is_running():
            raise EmbeddedServerError(
                f"PostgreSQL in {self.data_dir} did not stop ({mode}):\n"
                f"{_tail(result.stdout + result.stderr)}"
            )
        logger.info("stopped PostgreSQL on port %d (%s)", self.port, mode)

    def is_running(self) -> bool:
        """Whether a postmaster runs on ``data_dir`` (``pg_ctl status``)."""
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        return self._pg_ctl("status").returncode == 0

    def _start_once(self) -> None:
        self._write_owned(self.data_dir / SETTINGS_FILE, self._settings_text())
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        timeout = str(int(self.start_timeout))
        # No blind retry: a second `pg_ctl start` would race the first server.
        result = self._pg_ctl(
            "start", "--wait", "--timeout", timeout, "--log", str(self.log_file), retry=False
        )
        if result.returncode == 0:
            logger.info("started PostgreSQL on port %d (%s)", self.port, self.data_dir)
            return
        log = self._read_log(log_start)
        if self._access_problem(result, log):
            if self.is_running():  # it started; pg_ctl only failed to see it
                logger.info("started PostgreSQL on port %d (%s)", self.port, self.data_dir)
                return
            raise _AccessLost(str(self.data_dir))
        if "Address already in use" in log or not port_is_free(self.port):
            raise _PortInUse(f"port {self.port} is in use")
        # pg_ctl gives up after --timeout but the server may still come up: do not leak it.
        self.stop("immediate")
        raise EmbeddedServerError(
            f"PostgreSQL in {self.data_dir} did not start on port {self.port}:\n"
            f"{_tail(result.stdout + result.stderr)}\n"
            f"--- end of {self.log_file} ---\n{_tail(log)}"
        )

    def _move_to_free_port(self) -> None:
        taken, self.port = self.port, pick_free_ports(1)[0]
        logger.info("port %d is taken; %s moves to port %d", taken, self.data_dir, self.port)

    def _settings_text(self) -> str:
        lines = [
            "# Written by shardflow.local on every start; change LocalServer settings instead.",
            f"port = {self.port}",
            f"listen_addresses = '{LOOPBACK}'",
            "unix_socket_directories = ''",
        ]
        lines += [f"{name} = '{_quote(value)}'" for name, value in self.settings.items()]
        return "\n".join(lines) + "\n"

    def _make_reachable(self) -> None:
        if self._user is not None:
            ensure_traversable(self.data_dir.parent, self._user)
            ensure_traversable(self.bindir, self._user)

    def _access_problem(self, result: subprocess.CompletedProcess[str], *logs: str) -> bool:
        """Whether a failed call may have failed because the server user lost its way to
        the data directory meanwhile; if so, access is restored and a retry is worth it.

        Looks at the directories now and at the output: another thread may already have
        restored access. See :mod:`shardflow.local.unprivileged`.
        """
        user = self._user
        if user is None:
            return False
        lost = not (is_reachable(self.data_dir.parent, user) and is_reachable(self.bindir, user))
        denied = any("Permission denied" in text for text in (result.stdout, result.stderr, *logs))
        if not (lost or denied):
            return False
        logger.warning("user %r was denied access to %s; retrying", user.name, self.data_dir)
        self._make_reachable()
        return True

    def _write_owned(self, path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        if self._user is not None:
            os.chown(path, self._user.uid, self._user.gid)

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _pg_ctl(
        self, command: str, *args: str, retry: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``pg_ctl command``; with ``retry``, again if access was lost meanwhile."""
        self._make_reachable()
        argv = [str(self.bindir / "pg_ctl"), command, "--pgdata", str(self.data_dir), *args]
        timeout = self.start_timeout + 30
        for _ in range(_ACCESS_ATTEMPTS):
            result = self._run(argv, timeout=timeout)
            if not retry or result.returncode == 0 or not self._access_problem(result):
                break
        return result

    def _run(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        user = self._user
        try:
            return subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=_child_env(user),
                # The programs resolve their own path from the working directory and fail
                # if the server user cannot read it (e.g. root's home), so run from "/".
                cwd="/",
                user=user.uid if user else None,
                group=user.gid if user else None,
                extra_groups=sorted(user.groups) if user else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedServerError(
                f"{Path(args[0]).name} {args[1]} timed out after {timeout:.0f}s"
            ) from exc
        except OSError as exc:
            raise EmbeddedServerError(f"could not run {args[0]}: {exc}") from exc


def _child_env(user: ServerUser | None) -> dict[str, str]:
    # PGDATA, PGPORT, PGOPTIONS... from the caller's shell must not change how our
    # servers start. LC_ALL=C keeps messages in English, so logs can be searched.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    return env


def _remove_contents(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
