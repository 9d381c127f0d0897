"""Running PostgreSQL as an unprivileged user when shardflow itself runs as root.

``initdb``, ``pg_ctl`` and ``postgres`` refuse to run as root. Under root (containers, CI
images) the local servers run as ``$SHARDFLOW_PG_USER``, else ``postgres`` if that account
exists, else ``nobody``: their data directories are owned by that user and the programs
are started with ``subprocess``'s ``user=``/``group=`` arguments.

That user must be able to reach the data directory. shardflow never changes the
permissions of a directory it did not create: when the cluster's directory is out of the
server user's reach (``/root/...``, pytest's ``/tmp/pytest-of-root/...``, mode 0700), the
data directories go to a fresh 0700 directory owned by that user under the system's
temporary directory instead (see :func:`make_server_root`). Directories shardflow
creates for the server are mode 0700 and owned by the server user.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shardflow.errors import EmbeddedServerError

logger = logging.getLogger(__name__)

USER_ENV = "SHARDFLOW_PG_USER"
_FALLBACK_USERS = ("postgres", "nobody")


@dataclass(frozen=True, slots=True)
class ServerUser:
    """The account the PostgreSQL programs run as."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]
    home: str

    def can_traverse(self, directory: Path) -> bool:
        """Whether this user may search ``directory`` (POSIX owner/group/other rule)."""
        st = directory.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in self.groups:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


def server_user() -> ServerUser | None:
    """The user to run PostgreSQL as, or ``None`` to run it as the current user.

    Only root needs another user.
    """
    if os.geteuid() != 0:
        return None
    wanted = os.environ.get(USER_ENV)
    names = (wanted,) if wanted else _FALLBACK_USERS
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            raise EmbeddedServerError(f"{USER_ENV}={name} is root; PostgreSQL refuses root")
        groups = frozenset(os.getgrouplist(name, entry.pw_gid))
        return ServerUser(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)
    raise EmbeddedServerError(
        f"running as root, and none of the users {', '.join(names)} exists to run "
        f"PostgreSQL as; create one or set {USER_ENV}"
    )


def is_reachable(path: Path, user: ServerUser) -> bool:
    """Whether ``user`` may search ``path`` and every directory above it."""
    path = path.absolute()
    return all(user.can_traverse(d) for d in (*reversed(path.parents), path))


def require_reachable(path: Path, user: ServerUser) -> None:
    """Raise unless ``user`` may search ``path`` and every directory above it."""
    path = path.absolute()
    for directory in (*reversed(path.parents), path):
        if not user.can_traverse(directory):
            raise EmbeddedServerError(
                f"user {user.name!r} (which runs PostgreSQL) cannot reach {path}: {directory}"
                " is not searchable by it; choose a directory it can reach"
            )


def make_owned_dir(directory: Path, user: ServerUser | None) -> None:
    """Create ``directory`` and any missing parent: mode 0700, owned by the server user.

    Nothing that exists already has its permissions changed; an existing directory above
    that the server user cannot reach is an error.
    """
    directory = directory.absolute()
    missing = [d for d in (*reversed(directory.parents), directory) if not d.exists()]
    if user is not None:
        # Fail before creating anything if an existing directory above is out of reach.
        existing = missing[0].parent if missing else directory
        require_reachable(existing, user)
    for level in missing:
        try:
            level.mkdir(mode=0o700)
        except FileExistsError:
            continue  # another thread or process made it meanwhile
        if user is not None:
            os.chown(level, user.uid, user.gid)


def make_server_root(user: ServerUser, prefix: str) -> Path:
    """A fresh directory (mode 0700, owned by ``user``) under the temporary directory.

    For data directories when the place the caller chose is out of ``user``'s reach.
    """
    base = Path(tempfile.gettempdir())
    require_reachable(base, user)
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chown(root, user.uid, user.gid)
    logger.info("data directories for user %r go to %s", user.name, root)
    return root
