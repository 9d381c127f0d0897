"""The dashboard's safety rules at the HTTP level (no browser): auth, host check,
escaping, no secrets in pages, mounting in another ASGI app, and `shardflow ui` refusing
to open itself to a network without auth."""

from __future__ import annotations

import base64
import re

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

import shardflow
from shardflow.cli.main import main
from shardflow.engine.cluster import Cluster
from shardflow.errors import ConfigError
from shardflow.testing.servers import TestCluster
from shardflow.ui import Auth, create_app
from shardflow.ui.security import LOOPBACK_HOSTS
from tests.browser.conftest import HOSTILE_ID

TOKEN = "t0ken-for-the-dashboard-tests"


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def test_hostile_id_is_escaped_and_url_encoded(cluster: Cluster) -> None:
    cluster.submit("ui.pending", workflow_id=HOSTILE_ID)
    client = TestClient(create_app(cluster))
    listing = client.get("/workflows").text
    assert "<script>window.__xss" not in listing
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;&#34;&#39;&amp;{x}&lt;b&gt;" in listing
    assert "/workflow?id=%3Cscript%3Ewindow.__xss%3D1%3C%2Fscript%3E%22%27%26" in listing
    page = client.get("/workflow", params={"id": HOSTILE_ID})
    assert page.status_code == 200
    assert "<b>bold</b>" not in page.text and "&lt;b&gt;bold&lt;/b&gt;" in page.text
    # Security headers: no inline script may run, no framing, IDs not sent as referrer.
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"


def test_longest_workflow_id_has_a_page(cluster: Cluster) -> None:
    longest = "L" * 512
    cluster.submit("ui.pending", workflow_id=longest)
    page = TestClient(create_app(cluster)).get("/workflow", params={"id": longest})
    assert page.status_code == 200 and longest in page.text


def test_no_dsn_or_password_in_any_page(cluster: Cluster, test_cluster: TestCluster) -> None:
    cluster.submit("ui.pending", workflow_id="w-1")
    client = TestClient(create_app(cluster))
    secrets = [s.dsn for s in test_cluster.config.shards]
    for path in ("/", "/workflows", "/workflow?id=w-1", "/failures", "/workflow?id=nope"):
        text = client.get(path).text
        for dsn in secrets:
            assert dsn not in text
        assert "password" not in text.lower()


def test_unknown_workflow_and_bad_filter_are_error_pages(cluster: Cluster) -> None:
    client = TestClient(create_app(cluster))
    missing = client.get("/workflow", params={"id": "<nope>"})
    assert missing.status_code == 404 and "&lt;nope&gt;" in missing.text
    bad = client.get("/workflows", params={"created_after": "<soon>"})
    assert bad.status_code == 400
    assert "filter created_after: &#39;&lt;soon&gt;&#39; is not an ISO 8601 time" in bad.text


def test_token_auth(cluster: Cluster) -> None:
    auth = Auth.from_spec("token:UI_TOKEN", {"UI_TOKEN": TOKEN})
    client = TestClient(create_app(cluster, auth=auth), follow_redirects=False)
    assert client.get("/workflows").status_code == 401
    assert client.get("/", headers={"accept": "text/html"}).headers["location"] == "/login"
    assert client.get("/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/", headers={"authorization": "Bearer wrong"}).status_code == 401
    # A browser signs in once; the cookie is not the token itself.
    form = client.get("/login")
    assert form.status_code == 200
    token_field = csrf_of(form.text)
    wrong = client.post("/login", data={"token": "nope", "csrf_token": token_field})
    assert wrong.status_code == 401
    signed = client.post("/login", data={"token": TOKEN, "csrf_token": token_field})
    assert signed.status_code == 303
    assert TOKEN not in signed.headers["set-cookie"]
    assert client.get("/workflows").status_code == 200


def test_basic_auth(cluster: Cluster) -> None:
    auth = Auth.from_spec("basic:UI_BASIC", {"UI_BASIC": "ops:s3cret-pass"})
    client = TestClient(create_app(cluster, auth=auth))
    refused = client.get("/")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    good = base64.b64encode(b"ops:s3cret-pass").decode()
    assert client.get("/", headers={"authorization": f"Basic {good}"}).status_code == 200
    bad = base64.b64encode(b"ops:guess").decode()
    assert client.get("/", headers={"authorization": f"Basic {bad}"}).status_code == 401


@pytest.mark.parametrize(
    ("spec", "env", "message"),
    [
        ("token", {}, "expected token:VARIABLE or basic:VARIABLE"),
        ("token:MISSING", {}, "environment variable MISSING is not set or empty"),
        ("basic:B", {"B": "no-colon"}, "B must hold user:password"),
        ("token:T", {"T": "tiny-tok"}, "shorter than 16 characters"),
    ],
)
def test_bad_auth_settings(spec: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Auth.from_spec(spec, env)
    for value in env.values():
        assert value not in str(caught.value)


def test_host_check_without_auth(cluster: Cluster) -> None:
    app = create_app(cluster, allowed_hosts=LOOPBACK_HOSTS)
    assert TestClient(app, base_url="http://127.0.0.1:8080").get("/").status_code == 200
    assert TestClient(app, base_url="http://localhost:8080").get("/").status_code == 200
    assert TestClient(app, base_url="http://evil.example:8080").get("/").status_code == 421


def test_mounted_in_another_asgi_app(cluster: Cluster) -> None:
    cluster.submit("ui.pending", workflow_id="m-1")
    outer = Starlette(routes=[Mount("/ops/shardflow", app=create_app(cluster))])
    client = TestClient(outer, follow_redirects=False)
    page = client.get("/ops/shardflow/workflow", params={"id": "m-1"})
    assert page.status_code == 200
    assert 'href="/ops/shardflow/workflows"' in page.text
    assert 'src="/ops/shardflow/static/htmx-2.0.11.min.js"' in page.text
    assert client.get("/ops/shardflow/static/htmx-2.0.11.min.js").status_code == 200
    # An action through the mount: confirm page, then POST with its CSRF token.
    confirm = client.get("/ops/shardflow/confirm", params={"action": "cancel", "id": "m-1"})
    done = client.post(
        "/ops/shardflow/action",
        data={"action": "cancel", "id": "m-1", "csrf_token": csrf_of(confirm.text)},
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/ops/shardflow/workflow?id=m-1&done=cancelled"
    assert cluster.get("m-1").state is shardflow.WorkflowState.CANCELLED


def test_cross_site_post_refused_even_with_a_token(cluster: Cluster) -> None:
    cluster.submit("ui.pending", workflow_id="x-1")
    client = TestClient(create_app(cluster))
    token = csrf_of(client.get("/confirm", params={"action": "cancel", "id": "x-1"}).text)
    reply = client.post(
        "/action",
        data={"action": "cancel", "id": "x-1", "csrf_token": token},
        headers={"sec-fetch-site": "cross-site"},
    )
    assert reply.status_code == 403
    assert cluster.get("x-1").state is shardflow.WorkflowState.ENQUEUED


def test_cli_refuses_a_network_address_without_auth(
    test_cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ["--config", str(test_cluster.path)]
    assert main([*config, "ui", "--host", "0.0.0.0"]) == 2
    assert "pass --auth token:VARIABLE" in capsys.readouterr().err
    assert main([*config, "ui", "--host", "0.0.0.0", "--auth", "token:NOT_SET_ANYWHERE"]) == 2
    assert "NOT_SET_ANYWHERE is not set" in capsys.readouterr().err


def test_the_docs_mount_example(test_cluster: TestCluster) -> None:
    # docs/dashboard.md's example, line for line (tests/unit/test_doc_examples.py).
    config_path = str(test_cluster.path)
    cluster = shardflow.connect(config_path)
    app = Starlette(routes=[Mount("/ops/shardflow", app=create_app(cluster, read_only=True))])
    try:
        page = TestClient(app).get("/ops/shardflow/")
        assert page.status_code == 200 and 'id="read-only"' in page.text
        assert page.text.count('class="shard"') == 3
    finally:
        cluster.close()
