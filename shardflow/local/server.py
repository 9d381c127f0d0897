"""One local PostgreSQL server: a data directory, a loopback port, ``pg_ctl``.

The server listens on 127.0.0.1 only and has no Unix socket, which avoids
``/var/run/postgresql`` permissions and the 107-byte socket path limit of deep temporary
directories. Every connection needs the password of the ``postgres`` superuser
(SCRAM-SHA-256; MD5 before PostgreSQL 10): trusting loopback would make every local OS
account a superuser, able to run programs as the server's user (``COPY ... TO PROGRAM``).
The password is random, made with :mod:`secrets`, and kept in a mode 0600 file
(:attr:`LocalServer.password_file`); :meth:`LocalServer.dsn` includes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import quote

from shardflow.errors import EmbeddedServerError
from shardflow.local.binaries import find_pg_bindir
from shardflow.local.ports import LOOPBACK, pick_free_ports, port_is_free
from shardflow.local.unprivileged import (
    ServerUser,
    make_owned_dir,
    require_reachable,
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
PASSWORD_FILE = "superuser.password"
SUPERUSER = "postgres"
_START_ATTEMPTS = 5
_LOG_TAIL_LINES = 30
_PG_HBA = """\
# Written by shardflow.local: TCP on loopback only, password ({method}) required.
host    all             all     127.0.0.1/32    {method}
host    replication     all     127.0.0.1/32    {method}
"""


class _PortInUse(EmbeddedServerError):
    """The server could not bind its port: someone else holds it."""


class LocalServer:
    """A PostgreSQL server in ``data_dir`` listening on ``127.0.0.1:port``.

    ``port`` defaults to a free one. ``settings`` are ``postgresql.conf`` parameters on top
    of :data:`DEFAULT_SETTINGS` (tests pass ``fsync=off`` and friends for speed); they are
    written on every :meth:`start`. ``bindir`` defaults to :func:`find_pg_bindir`.
    ``password_file`` (default ``superuser.password`` beside ``data_dir``) holds the
    superuser's password; :meth:`init` creates it (mode 0600) if missing, and servers
    may share one. Under root the programs run as an unprivileged user (see
    :mod:`shardflow.local.unprivileged`), which must be able to reach ``data_dir``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        bindir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        password_file: str | os.PathLike[str] | None = None,
    ) -> None:
        overridden = _MANAGED_SETTINGS.intersection(settings or {})
        if overridden:
            raise ValueError(f"LocalServer sets {', '.join(sorted(overridden))} itself")
        self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else pick_free_ports(1)[0]
        self.bindir = bindir if bindir is not None else find_pg_bindir()
        self.settings: Mapping[str, str] = {**DEFAULT_SETTINGS, **(settings or {})}
        self.start_timeout = start_timeout
        self.password_file = (
            Path(password_file).absolute()
            if password_file is not None
            else self.data_dir.parent / PASSWORD_FILE
        )
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

    @property
    def password(self) -> str | None:
        """The superuser's password, or None for a server made before passwords were."""
        try:
            return self.password_file.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def dsn(self, dbname: str = "postgres") -> str:
        """Connection URL for ``dbname`` as the ``postgres`` superuser, password included
        (redact it before printing: :func:`shardflow.config.redact_dsn`)."""
        password = self.password
        secret = "" if password is None else ":" + quote(password, safe="")
        return f"postgresql://{SUPERUSER}{secret}@{LOOPBACK}:{self.port}/{quote(dbname, safe='')}"

    def init(self) -> None:
        """Create the database cluster with ``initdb``, unless ``data_dir`` holds one."""
        if self.initialized:
            return
        make_owned_dir(self.data_dir, self._user)
        self._require_reachable()
        password = ensure_password_file(self.password_file)
        method = auth_method(self.bindir)
        with self._initdb_password_file(password) as pwfile:
            args = [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--auth",
                method,
                "--pwfile",
                str(pwfile),
                "--username",
                SUPERUSER,
                "--encoding",
                "UTF8",
                "--no-locale",
            ]
            if self.settings.get("fsync") == "off":
                # The caller does not want durability, so skip initdb's final fsync (~1 s).
                args.append("--no-sync")
            result = self._run(args, timeout=120)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"initdb failed for {self.data_dir} (exit {result.returncode}):\n"
                f"{_tail(result.stdout + result.stderr)}"
            )
        self._write_owned(self.data_dir / "pg_hba.conf", _PG_HBA.format(method=method))
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
            else:
                return
        raise EmbeddedServerError(
            f"PostgreSQL in {self.data_dir} did not start in {_START_ATTEMPTS} attempts"
            " (port taken every time)"
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
        result = self._pg_ctl("start", "--wait", "--timeout", timeout, "--log", str(self.log_file))
        if result.returncode == 0:
            logger.info("started PostgreSQL on port %d (%s)", self.port, self.data_dir)
            return
        log = self._read_log(log_start)
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

    def _require_reachable(self) -> None:
        if self._user is not None:
            require_reachable(self.data_dir.parent, self._user)
            require_reachable(self.bindir, self._user)

    @contextlib.contextmanager
    def _initdb_password_file(self, password: str) -> Iterator[Path]:
        """A copy of the password that ``initdb --pwfile`` (run as the server user) can
        read, in a private directory beside the data directory; removed afterwards."""
        holder = Path(tempfile.mkdtemp(prefix=".initdb-", dir=self.data_dir.parent))
        try:
            pwfile = holder / "pwfile"
            descriptor = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(password + "\n")
            if self._user is not None:
                os.chown(holder, self._user.uid, self._user.gid)
                os.chown(pwfile, self._user.uid, self._user.gid)
            yield pwfile
        finally:
            shutil.rmtree(holder, ignore_errors=True)

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

    def _pg_ctl(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``pg_ctl command``."""
        self._require_reachable()
        argv = [str(self.bindir / "pg_ctl"), command, "--pgdata", str(self.data_dir), *args]
        return self._run(argv, timeout=self.start_timeout + 30)

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


def ensure_password_file(path: Path) -> str:
    """The password in ``path``; a new random one (mode 0600 file) if there is none."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(24) + "\n")
        try:
            # A link appears complete or not at all, and never replaces another
            # process's password: the loser of a race reads the winner's.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    password = path.read_text(encoding="utf-8").strip()
    if not password:
        raise EmbeddedServerError(f"{path} is empty; remove it or put a password in it")
    return password


def auth_method(bindir: Path) -> str:
    """``scram-sha-256``, or ``md5`` for PostgreSQL before 10 (no SCRAM there)."""
    try:
        result = subprocess.run(
            [str(bindir / "initdb"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=_child_env(None),
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError):
        return "scram-sha-256"
    match = re.search(r"(\d+)(?:\.\d+)?", result.stdout)
    return "md5" if match and int(match.group(1)) < 10 else "scram-sha-256"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
