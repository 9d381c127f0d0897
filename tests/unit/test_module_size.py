"""No module of the package grows past about 400 lines (issue 12's rule): a module that
long has more than one reason to change, and a reader should find a behaviour in one
short file (docs/architecture.md's code map). The limit leaves a little slack for the
last docstring; past it, split along a real seam."""

from __future__ import annotations

from pathlib import Path

import shardflow

LIMIT = 420
PACKAGE = Path(shardflow.__file__).parent


def test_no_module_is_over_the_limit() -> None:
    sizes = {
        path.relative_to(PACKAGE.parent).as_posix(): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert len(sizes) > 50  # the walk found the package
    too_long = {name: n for name, n in sizes.items() if n > LIMIT}
    assert not too_long, f"modules over {LIMIT} lines: {too_long}"
