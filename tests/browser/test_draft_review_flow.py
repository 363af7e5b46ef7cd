"""The whole four-eyes flow in a real browser: draft with live validation, preview, submit, approve, audit."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from incidents.models import Draft, DraftState, Publication, Review

# The publication is queued (``no_broker`` keeps the broker out); sending it is tests/publishing's.
from .pagecheck import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_responder_drafts_with_live_validation_and_approver_approves(
    live_server, browser, responder, approver, api_service, password, csp_violations, page, no_broker
):
    base = live_server.url
    sign_in(page, base, "responder", password)
    page.click("text=New incident")
    expect(page).to_have_url(re.compile(r"/drafts/new/$"))

    page.select_option("#id_service", label="API (#1001)")
    # Leave the title empty: the server's error appears next to the field without a page load.
    page.fill("#id_title", "x")
    page.fill("#id_title", "")
    page.locator("#id_title").blur()
    expect(page.locator("#id_title_error")).to_contain_text("This field is required.")

    page.fill("#id_title", "Elevated API errors")
    page.locator("#id_title").blur()
    expect(page.locator("#id_title_error")).to_be_empty()
    expect(page.locator("[data-counter-for=id_title]")).to_have_text("19 / 255")

    page.select_option("#id_severity", "major")
    page.fill("#id_description", "We are seeing elevated 5xx responses on the public API.")
    page.locator("#id_description").blur()
    preview = page.locator("#request-preview")
    expect(preview).to_contain_text("POST /api/v2/incidents")
    expect(preview).to_contain_text('"title": "Elevated API errors"')
    expect(preview).to_contain_text('"status": "major"')

    page.click("button[value=submit]")
    expect(page.locator("#draft-state")).to_have_text("In review")
    draft = Draft.objects.get()
    assert draft.state == DraftState.IN_REVIEW

    approver_page = browser.new_context().new_page()
    sign_in(approver_page, base, "approver", password)
    expect(approver_page.locator("#review-count")).to_have_text("1")
    approver_page.click("#panel-reviews a")
    request = approver_page.locator("#revision-request-0")
    expect(request).to_contain_text("POST /api/v2/incidents")
    expect(request).to_contain_text('"title": "Elevated API errors"')
    expect(approver_page.locator("pre.revision-request")).to_have_count(1)
    revision = draft.revisions.get()
    expect(approver_page.locator("#revision-hash")).to_have_text(revision.sha256)
    approver_page.click("button[value=approve]")
    expect(approver_page.locator(".msg-success")).to_contain_text("Approved")
    expect(approver_page.locator("#review-count")).to_have_count(0)
    publication = Publication.objects.get()
    assert publication.revision == revision
    # The approval bound the hash the page showed, and the publication went to the broker after commit.
    assert Review.objects.get(revision=revision).sha256 == revision.sha256
    assert ("publish", publication.pk) in no_broker.sent

    approver_page.goto(f"{base}/audit/")
    log = approver_page.locator("main")
    for action in ("draft.created", "draft.submitted", "review.approved"):
        expect(log).to_contain_text(action)
    assert csp_violations == []
