"""The whole journey in a real browser, with a real worker publishing to the sandbox over HTTP, at 1280 px and
390 px, every page inspected (tests/browser/pagecheck.py: fits the window, a proper title, axe-core clean, a
screenshot): create with errors → submit → request changes → resubmit → approve → published → update → resolve,
and a 422 from IsDown → failed → the approver is shown what can still succeed."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Browser, Page, expect

from incidents.models import Draft, Incident, Publication, PublicationState
from sandbox import faults
from tests.browser.conftest import allow_orm_beside_playwright, browser_type_launch_args  # noqa: F401
from tests.browser.pagecheck import WIDTHS, Findings, inspecting_context, sign_in
from tests.factories import MembershipFactory, UserFactory
from tests.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]
PUBLISHED = 30.0  # seconds a publication may take to land, worker and sandbox included (usually 1-3 s)


def published(draft_id: int) -> Publication:
    return wait_for(
        lambda: Publication.objects.filter(revision__draft_id=draft_id, state=PublicationState.PUBLISHED).first(),
        timeout=PUBLISHED,
        what=f"draft {draft_id} published",
    )


def approve(page: Page, base: str, draft_id: int, findings: Findings, name: str) -> None:
    page.goto(f"{base}/drafts/{draft_id}/review/")
    expect(page.locator("main h1")).to_be_visible()
    findings.inspect(page, name)
    page.click("button[value=approve]")
    expect(page.locator(".msg-success")).to_contain_text("Approved")


@pytest.mark.parametrize("width", list(WIDTHS))
def test_the_whole_journey_at_both_widths(
    live_server, browser: Browser, start_worker, service, author, approver_user, password, width
):
    start_worker()
    base, findings = live_server.url, Findings()
    team = service.team
    MembershipFactory(user=UserFactory(username="approver2"), team=team, role="approver")
    responder = inspecting_context(browser, width).new_page()
    approver = inspecting_context(browser, width).new_page()
    sign_in(responder, base, "responder", password)
    sign_in(approver, base, "approver", password)
    findings.inspect(responder, f"{width}-dashboard")

    # Create, with errors first: the summary takes focus and links to each field.
    responder.goto(f"{base}/drafts/new/")
    expect(responder.locator("#id_service")).to_be_focused()
    findings.inspect(responder, f"{width}-draft-new")
    responder.click("button[value=save]")
    expect(responder.locator("#error-summary")).to_be_visible()
    expect(responder.locator("#error-summary")).to_be_focused()
    findings.inspect(responder, f"{width}-draft-errors")

    # Fast typing: the preview ends with what was typed last.
    responder.select_option("#id_service", label="API (#1001)")
    responder.fill("#id_title", "Elevated API errors")
    responder.select_option("#id_severity", "major")
    responder.fill("#id_description", "We are seeing 5xx")
    responder.fill("#id_description", "We are seeing elevated 5xx responses on the public API.")
    expect(responder.locator("#request-preview")).to_contain_text("elevated 5xx responses on the public API.")
    responder.click("button[value=submit]")
    expect(responder.locator("#draft-state")).to_have_text("In review")
    draft = Draft.objects.get()
    findings.inspect(responder, f"{width}-draft-in-review")

    # Request changes: the approver is sent back to the queue.
    approver.goto(f"{base}/drafts/{draft.pk}/review/")
    findings.inspect(approver, f"{width}-review")
    approver.fill("#id_comment", "Say which region is affected.")
    approver.click("button[value=request_changes]")
    expect(approver).to_have_url(re.compile(r"/(#panel-reviews)?$"))
    expect(approver.locator(".msg")).to_contain_text("hanges")
    findings.inspect(approver, f"{width}-after-request-changes")

    # Resubmit with the change.
    responder.goto(f"{base}/drafts/{draft.pk}/")
    expect(responder.locator("#latest-review")).to_contain_text("Say which region is affected.")
    responder.fill("#id_description", "We are seeing elevated 5xx responses on the public API in eu-west.")
    expect(responder.locator("#request-preview")).to_contain_text("eu-west")
    responder.click("button[value=submit]")
    expect(responder.locator("#draft-state")).to_have_text("In review")

    # Approve: published by the worker, and the page says so without a reload.
    approve(approver, base, draft.pk, findings, f"{width}-review-resubmitted")
    opened = published(draft.pk)
    responder.goto(f"{base}/drafts/{draft.pk}/")
    expect(responder.locator("#draft-state")).to_have_text(re.compile("Published"), timeout=PUBLISHED * 1000)
    incident = Incident.objects.get(pk=opened.incident_id)
    responder.goto(f"{base}/incidents/{incident.pk}/")
    expect(responder).to_have_title(re.compile(rf"^Elevated API errors · Incident #{incident.pk} · isdown-admin$"))
    expect(responder.locator("#history, h2:has-text('History')").first).to_be_visible()
    findings.inspect(responder, f"{width}-incident")

    # An update, starting at the incident's current stage.
    responder.click("text=Post update")
    expect(responder.locator("#id_stage")).to_have_value("investigating")
    findings.inspect(responder, f"{width}-update-new")
    responder.select_option("#id_stage", "identified")
    responder.fill("#id_description", "A bad deploy in eu-west; rolling back.")
    expect(responder.locator("#request-preview")).to_contain_text("rolling back")
    responder.click("button[value=submit]")
    expect(responder.locator("#draft-state")).to_have_text("In review")
    update = Draft.objects.exclude(pk=draft.pk).get()
    approve(approver, base, update.pk, findings, f"{width}-review-update")
    published(update.pk)

    # Resolve: its own title and a default text.
    responder.goto(f"{base}/incidents/{incident.pk}/")
    responder.click("text=Resolve")
    expect(responder.locator("main h1")).to_have_text("Resolve incident")
    expect(responder.locator("#id_description")).not_to_have_value("")
    findings.inspect(responder, f"{width}-resolve")
    responder.click("button[value=submit]")
    expect(responder.locator("#draft-state")).to_have_text("In review")
    resolve = Draft.objects.exclude(pk__in=[draft.pk, update.pk]).get()
    approve(approver, base, resolve.pk, findings, f"{width}-review-resolve")
    published(resolve.pk)
    wait_for(lambda: Incident.objects.get(pk=incident.pk).resolved, timeout=PUBLISHED, what="incident resolved")
    responder.goto(f"{base}/incidents/{incident.pk}/")
    expect(responder.locator("main")).to_contain_text("Resolved")
    findings.inspect(responder, f"{width}-incident-resolved")

    # A 422 from IsDown: the publication fails for good; nobody is offered an action that must fail again.
    faults.add_fault(kind="status", status=422, method="POST", actor_label="test")
    responder.goto(f"{base}/drafts/new/")
    responder.select_option("#id_service", label="API (#1001)")
    responder.fill("#id_title", "Checkout errors")
    responder.fill("#id_description", "Card payments fail for some customers.")
    expect(responder.locator("#request-preview")).to_contain_text("Card payments fail")
    responder.click("button[value=submit]")
    expect(responder.locator("#draft-state")).to_have_text("In review")
    failing = Draft.objects.get(title="Checkout errors")
    approve(approver, base, failing.pk, findings, f"{width}-review-failing")
    failed = wait_for(
        lambda: Publication.objects.filter(revision__draft_id=failing.pk, state=PublicationState.FAILED).first(),
        timeout=PUBLISHED,
        what="the 422 publication failed",
    )
    approver.goto(f"{base}/publications/{failed.pk}/")
    expect(approver.locator("main")).to_contain_text("422")
    expect(approver.locator("button:has-text('Retry now')")).to_have_count(0)
    findings.inspect(approver, f"{width}-publication-failed")
    responder.goto(f"{base}/publications/{failed.pk}/")
    expect(responder.locator("main")).to_contain_text("approver")
    findings.inspect(responder, f"{width}-publication-failed-responder")

    # Edit and resubmit: the failed publication is superseded, the draft goes back to its author and review.
    approver.goto(f"{base}/publications/{failed.pk}/")
    approver.click("button:has-text('Edit and resubmit')")
    wait_for(
        lambda: Publication.objects.get(pk=failed.pk).state == PublicationState.SUPERSEDED,
        timeout=PUBLISHED,
        what="the failed publication superseded",
    )
    responder.goto(f"{base}/drafts/{failing.pk}/")
    responder.fill("#id_title", "Card payments fail")
    expect(responder.locator("#request-preview")).to_contain_text("Card payments fail")
    responder.click("button[value=submit]")
    expect(responder.locator("#draft-state")).to_have_text("In review")
    approve(approver, base, failing.pk, findings, f"{width}-review-edited")
    published(failing.pk)
    findings.assert_clean()
