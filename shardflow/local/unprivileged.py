"""Running PostgreSQL as an unprivileged user when shardflow itself runs as root.

``initdb``, ``pg_ctl`` and ``postgres`` refuse to run as root. Under root (containers, CI
images) the local servers run as ``$SHARDFLOW_PG_USER``, else ``postgres`` if that account
exists, else ``nobody``: their data directories are owned by that user and the programs
are started with ``subprocess``'s ``user=``/``group=`` arguments.

That user must be able to reach the data directory. A directory chosen by a root user
(``/tmp/x``, or pytest's ``/tmp/pytest-of-root/...``, which is mode 0700) often is not
searchable by others, so :func:`ensure_traversable` adds the one search (``x``) bit that
is missing, and only on directories owned by root that lack it: no directory is made
readable, and directories like ``/tmp`` that are already searchable are left alone.

The bit can be taken away again while servers run: every pytest session run as root
resets ``/tmp/pytest-of-root`` to mode 0700 when it starts. The server code therefore
checks before each ``initdb``/``pg_ctl`` call and retries a call that failed because
access was lost meanwhile.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
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


def ensure_traversable(path: Path, user: ServerUser) -> None:
    """Make ``path`` and every directory above it searchable by ``user``.

    Adds the missing search bit to root-owned directories only; a directory owned by
    someone else that ``user`` cannot search is an error, not something to change.
    """
    path = path.absolute()
    for directory in (*reversed(path.parents), path):
        if user.can_traverse(directory):
            continue
        st = directory.stat()
        if st.st_uid != 0:
            raise EmbeddedServerError(
                f"user {user.name!r} cannot reach {path}: {directory} (owned by uid "
                f"{st.st_uid}) is not searchable by it; choose another directory"
            )
        # Group bit if the user is in the directory's group: POSIX checks only one class.
        bit = stat.S_IXGRP if st.st_gid in user.groups else stat.S_IXOTH
        logger.warning(
            "adding search permission to %s so that user %r can reach %s",
            directory,
            user.name,
            path,
        )
        os.chmod(directory, stat.S_IMODE(st.st_mode) | bit)


def make_owned_dir(directory: Path, user: ServerUser | None) -> None:
    """Create ``directory`` (mode 0700) for the server user, and make it reachable."""
    if user is not None:
        # Fail before creating anything if an existing directory above is out of reach.
        existing = next(p for p in directory.absolute().parents if p.exists())
        ensure_traversable(existing, user)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if user is None:
        return
    # Directories just created follow root's umask, which may leave them unsearchable.
    ensure_traversable(directory.parent, user)
    st = directory.stat()
    if (st.st_uid, st.st_gid) != (user.uid, user.gid):
        os.chown(directory, user.uid, user.gid)
