"""Fixtures of the dashboard tests: a seeded 3-shard cluster, the dashboard served by
uvicorn on free ports (one server with actions, one read-only), and Chromium driven by
Playwright (the system's ``chromium``; Playwright never downloads a browser here).

Screenshots go to ``tests/browser/artifacts/`` (git-ignored); with
``SHARDFLOW_DOC_SCREENSHOTS=1`` they are also copied to ``docs/img/`` for
docs/dashboard.md.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn

import shardflow
from shardflow.engine.cluster import Cluster
from shardflow.local.ports import pick_free_ports
from shardflow.testing.servers import ClusterFactory, TestCluster, wait_until
from shardflow.ui import create_app
from tests.apps import basic, ops

ARTIFACTS = Path(__file__).parent / "artifacts"
DOC_IMAGES = Path(__file__).parents[2] / "docs" / "img"
# `<script>`, quotes, an ampersand and a brace, padded to 500 characters.
HOSTILE_ID = ("<script>window.__xss=1</script>\"'&{x}<b>bold</b>" + "z" * 500)[:500]


@dataclass
class Seeded:
    test_cluster: TestCluster
    cluster: Cluster
    url: str  # the dashboard with actions
    read_only_url: str

    def state(self, workflow_id: str) -> str:
        """The workflow's state, read straight from its shard's database."""
        shard = self.cluster.route(workflow_id)
        dsn = next(s.dsn for s in self.test_cluster.config.shards if s.name == shard)
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT state FROM shardflow.workflow_status WHERE workflow_id = %s",
                (workflow_id,),
            ).fetchone()
        assert row is not None, f"{workflow_id!r} is not on {shard}"
        return str(row[0])


def chromium_path() -> str:
    """The system's Chromium; skip only where it is missing and cannot be installed."""
    for name in (os.environ.get("SHARDFLOW_CHROMIUM", ""), "chromium", "chromium-browser"):
        found = shutil.which(name) if name else None
        if found:
            return found
    if shutil.which("apt-get") is None:
        pytest.skip("no chromium on this machine and no apt-get to install it")
    pytest.fail("chromium is missing: `apt-get install chromium` (.ci/run installs it)")


class _Server:
    def __init__(self, app: Any) -> None:
        (self.port,) = pick_free_ports(1)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="ui-server", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=20, message="the dashboard serves")
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def _seed(cluster: Cluster) -> None:
    with shardflow.Worker(cluster, basic.app, concurrency=4) as worker:
        for i in range(4):
            cluster.submit("basic.three_steps", i, workflow_id=f"ok-{i}")
        for i in range(3):
            cluster.submit("basic.failing", f"e{i}", workflow_id=f"err-{i}")
        for i in range(4):
            cluster.submit("basic.failing", f"b{i}", workflow_id=f"bulkerr-{i}")
        wait_until(
            lambda: worker.stats.finished["SUCCESS"] == 4 and worker.stats.finished["ERROR"] == 7,
            timeout=60,
            message="the seed workflows ended",
        )
    # No worker serves "ui.pending": these stay ENQUEUED.
    ids = [f"pend-{i}" for i in range(10)] + ["cancel-me", "readonly-1", "csrf-1", HOSTILE_ID]
    cluster.submit_many(
        [shardflow.Submission("ui.pending", (i,), workflow_id=w) for i, w in enumerate(ids)]
    )


@pytest.fixture(scope="module")
def seeded(cluster_factory: ClusterFactory) -> Iterator[Seeded]:
    made = cluster_factory.make(3)
    cluster = Cluster(made.config)
    try:
        _seed(cluster)
        # A worker of another app stays up: the overview lists it, and it never claims
        # the seeded workflows (it serves only the ops.* names).
        with (
            shardflow.Worker(cluster, ops.app, concurrency=1),
            _Server(create_app(cluster, refresh_seconds=3600)) as url,
            _Server(create_app(cluster, read_only=True, refresh_seconds=3600)) as ro_url,
        ):
            yield Seeded(made, cluster, url, ro_url)
    finally:
        cluster.close()
        cluster_factory.drop(made)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot and check it is not blank."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    # Written aside and renamed into place: two test runs at once (CI runs one per
    # PostgreSQL version) never read each other's half-written file.
    written = path.with_name(f"{path.stem}.{os.getpid()}.png")
    page.screenshot(path=str(written), full_page=True)
    assert_not_blank(written)
    os.replace(written, path)
    if os.environ.get("SHARDFLOW_DOC_SCREENSHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_IMAGES / path.name)
    return path


def assert_not_blank(path: Path) -> None:
    from PIL import Image, ImageStat

    with Image.open(path) as image:
        grey = image.convert("L")
        spread = ImageStat.Stat(grey).stddev[0]
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert spread > 10, f"{path.name} looks blank (grey level spread {spread:.1f})"
    assert colours is None or len(colours) > 16, f"{path.name} has only {len(colours)} colours"
