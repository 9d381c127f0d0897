"""A new user's first hour, literally: a fresh copy of the repository in a temporary
folder named ``shardflow``, a fresh virtualenv, and the README's commands run by bash as
written, from inside the repository's folder and from its parent (where the folder used
to shadow the package).

Offline: the new virtualenv sees the dependencies of the one running the tests (a .pth
file) and pip is told not to use an index. Sizes are cut through the commands' own
``SHARDFLOW_*`` variables (``SHARDFLOW_WORKFLOWS`` is ``demo --workflows``) and the test
selection through ``PYTEST_ADDOPTS``; the commands themselves are the README's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.e2e.procs import ROOT

# README.md, "Install and run the demo" and "Run the test suite": as written there.
INSTALL_AND_DEMO = "pip install -e '.[embedded]' && shardflow demo"
INSTALL_AND_TEST = "pip install -e '.[test]' && python -m pytest"

# README.md, "Try it on a local cluster" (examples/README.md starts the same way).
QUICKSTART = """\
export SHARDFLOW_CONFIG=$(shardflow dev up)
cd examples/orders
shardflow worker --app myapp:app &
WORKER=$!
python submit_order.py o-1
kill $WORKER
cd ../.. && shardflow dev down
"""

# The same program run from the repository's parent folder.
FROM_PARENT = """\
export SHARDFLOW_CONFIG=$(shardflow dev up --dir shardflow/.shardflow-dev)
(cd shardflow/examples/orders && exec shardflow worker --app myapp:app) &
WORKER=$!
python shardflow/examples/orders/submit_order.py o-2
kill $WORKER
wait $WORKER
shardflow dev down --dir shardflow/.shardflow-dev
"""


def _copy_repository(target: Path) -> None:
    """The files a fresh clone would have (tracked, and new files not yet committed)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    if shutil.which("git") is None or shutil.which("bash") is None:
        pytest.skip("needs git and bash")
    try:
        import wheel  # noqa: F401  (setuptools < 70.1 builds editable wheels with it)
    except ImportError:
        pytest.skip("needs the `wheel` package (the test extra) to install offline")
    base = tmp_path_factory.mktemp("fresh")
    clone = base / "shardflow"
    _copy_repository(clone)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (purelib / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SHARDFLOW_", "PYTHON", "PIP_", "VIRTUAL_ENV"))
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PIP_NO_INDEX="1",
        PIP_NO_BUILD_ISOLATION="0",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        COLUMNS="100",
    )
    return clone, env


def _bash(script: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (
        f"{script}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
    )
    return done.stdout


def test_the_commands_here_are_the_readmes() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert INSTALL_AND_DEMO in readme and INSTALL_AND_TEST in readme
    for line in QUICKSTART.splitlines():
        assert line in readme, line


def test_install_and_demo_inside_and_outside_the_repository(
    fresh: tuple[Path, dict[str, str]],
) -> None:
    clone, env = fresh
    env = env | {"SHARDFLOW_WORKFLOWS": "200", "SHARDFLOW_CONCURRENCY": "4"}
    inside = _bash(INSTALL_AND_DEMO, clone, env)
    assert "OK all 200 workflows completed exactly once" in inside
    assert "Removed the demo's servers and logs" in inside
    # From the parent folder, which holds a folder named `shardflow` (the clone).
    outside = _bash("shardflow demo", clone.parent, env)
    assert "OK all 200 workflows completed exactly once" in outside


def test_the_example_program_inside_and_outside_the_repository(
    fresh: tuple[Path, dict[str, str]],
) -> None:
    clone, env = fresh
    _bash("pip install -e '.[embedded]'", clone, env)
    assert _bash(QUICKSTART, clone, env).splitlines()[0] == "rcpt-o-1"
    assert _bash(FROM_PARENT, clone.parent, env).splitlines()[0] == "rcpt-o-2"


def test_install_and_test(fresh: tuple[Path, dict[str, str]]) -> None:
    clone, env = fresh
    env = env | {"PYTEST_ADDOPTS": "-q -p no:cacheprovider tests/unit/test_routing.py"}
    out = _bash(INSTALL_AND_TEST, clone, env)
    assert " passed" in out and "failed" not in out
