"""The dashboard in a real browser (Chromium driven by Playwright) against real shards."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.browser.conftest import HOSTILE_ID, Seeded, screenshot


def test_overview_shows_every_shard(seeded: Seeded, page: Any) -> None:
    page.goto(seeded.url + "/")
    rows = page.locator("#shards tr.shard")
    assert rows.count() == 3
    names = [rows.nth(i).get_attribute("data-shard") for i in range(3)]
    assert names == list(seeded.cluster.config.shard_names)
    for i in range(3):
        assert rows.nth(i).locator("td.ok").inner_text() == "yes"
    # The slot strip covers every slot, coloured by owner.
    runs = page.locator("#slot-strip rect:not(.moving)")
    widths = [int(runs.nth(i).get_attribute("width")) for i in range(runs.count())]
    assert sum(widths) == seeded.cluster.config.hash.slots
    assert page.locator("#workers tbody tr").count() >= 1  # the ops worker, on every shard
    assert "default" in page.locator("#queues").inner_text()
    screenshot(page, "overview")


def test_filter_narrows_the_list(seeded: Seeded, page: Any) -> None:
    page.goto(seeded.url + "/workflows")
    everything = page.locator("#workflow-list tr.wf").count()
    assert everything == 4 + 3 + 4 + 14
    page.select_option("select[name=state]", "ENQUEUED")
    page.fill("input[name=id_prefix]", "pend-")
    page.click("#apply-filters")
    page.wait_for_url("**/workflows?*id_prefix=pend-*")
    ids = page.locator("#workflow-list tr.wf td.id a").all_inner_texts()
    assert sorted(ids) == sorted(f"pend-{i}" for i in range(10))
    assert set(page.locator("#workflow-list td.state").all_inner_texts()) == {"ENQUEUED"}
    screenshot(page, "workflows")


def test_workflow_page_shows_its_steps(seeded: Seeded, page: Any) -> None:
    page.goto(seeded.url + "/workflows?name=basic.three_steps")
    page.click("text=ok-1")
    assert page.locator("#workflow-id").inner_text() == "ok-1"
    assert page.locator("#state").inner_text() == "SUCCESS"
    steps = page.locator("#steps tr.step")
    assert steps.count() == 3
    assert [steps.nth(i).locator("td").first.inner_text() for i in range(3)] == ["0", "1", "2"]
    assert page.locator("#steps td.timeline svg").count() == 3  # start and duration recorded
    screenshot(page, "workflow")


def test_failed_workflow_shows_error_and_traceback(seeded: Seeded, page: Any) -> None:
    page.goto(seeded.url + "/workflow?id=err-0")
    assert page.locator("#state").inner_text() == "ERROR"
    assert "ValueError: bad input e0" in page.locator("#error").inner_text()
    assert "Traceback" in page.locator("pre.traceback").inner_text()
    page.goto(seeded.url + "/failures")
    assert "basic.failing" in page.locator("#failures").inner_text()
    assert "ValueError" in page.locator("#failures").inner_text()
    screenshot(page, "failures")


def test_cancel_from_the_page(seeded: Seeded, page: Any) -> None:
    assert seeded.state("cancel-me") == "ENQUEUED"
    page.goto(seeded.url + "/workflow?id=cancel-me")
    page.click("#cancel")
    assert "Cancel workflow?" in page.locator("h1").inner_text()
    screenshot(page, "confirm")
    assert seeded.state("cancel-me") == "ENQUEUED"  # nothing happens before confirming
    page.click("#confirm")
    assert page.locator("#done").inner_text() == "Workflow cancelled."
    assert page.locator("#state").inner_text() == "CANCELLED"
    assert seeded.state("cancel-me") == "CANCELLED"


def test_bulk_resume_acts_on_exactly_the_filtered_set(seeded: Seeded, page: Any) -> None:
    page.goto(seeded.url + "/workflows?state=ERROR&id_prefix=bulkerr-")
    page.click("#bulk-resume")
    assert page.locator("#dry-run").inner_text().startswith("4 workflow(s) match")
    counts = page.locator("#bulk-counts td.n").all_inner_texts()
    assert sum(int(c) for c in counts) == 4 and len(counts) == 3
    screenshot(page, "bulk")
    assert {seeded.state(f"bulkerr-{i}") for i in range(4)} == {"ERROR"}  # a dry run
    page.click("#bulk-confirm")
    assert page.locator("#bulk-done").inner_text().startswith("4 workflow(s) resumed")
    assert {seeded.state(f"bulkerr-{i}") for i in range(4)} == {"ENQUEUED"}
    assert {seeded.state(f"err-{i}") for i in range(3)} == {"ERROR"}  # not matched


def test_hostile_workflow_id_renders_as_text(seeded: Seeded, page: Any) -> None:
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(seeded.url + "/workflows?id_prefix=" + quote("<script>", safe=""))
    link = page.locator("#workflow-list tr.wf td.id a")
    assert link.count() == 1
    assert link.inner_text() == HOSTILE_ID
    assert page.locator("#workflow-list b").count() == 0  # no markup from the ID
    link.click()
    page.wait_for_url("**/workflow?id=*")
    assert "%3Cscript%3E" in page.url  # URL-encoded, not raw
    assert page.locator("#workflow-id").inner_text() == HOSTILE_ID
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("main script").count() == 0
    assert dialogs == []
    screenshot(page, "hostile-id")


def test_actions_refused_in_read_only_mode(seeded: Seeded, page: Any) -> None:
    page.goto(seeded.read_only_url + "/workflow?id=readonly-1")
    assert page.locator("#read-only").inner_text() == "read-only"
    assert page.locator("#cancel").count() == 0
    page.goto(seeded.read_only_url + "/confirm?action=cancel&id=readonly-1")
    assert page.locator("#confirm-form").count() == 0
    reply = page.request.post(
        seeded.read_only_url + "/action", form={"action": "cancel", "id": "readonly-1"}
    )
    assert reply.status == 403
    assert "read-only" in reply.text()
    assert seeded.state("readonly-1") == "ENQUEUED"


def test_actions_refused_without_the_csrf_token(seeded: Seeded, page: Any) -> None:
    page.goto(seeded.url + "/workflow?id=csrf-1")  # the browser has its CSRF cookie now
    for form in (
        {"action": "cancel", "id": "csrf-1"},
        {"action": "cancel", "id": "csrf-1", "csrf_token": "0" * 64},
    ):
        reply = page.request.post(seeded.url + "/action", form=form)
        assert reply.status == 403
        assert "CSRF token" in reply.text()
    bulk = {"action": "cancel", "id_prefix": "csrf-"}
    assert page.request.post(seeded.url + "/bulk", form=bulk).status == 403
    assert seeded.state("csrf-1") == "ENQUEUED"
