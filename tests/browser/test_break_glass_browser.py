"""Break-glass in a real browser (issue 12 §4): enrol an authenticator app, publish one's own revision without a
second approver, the dashboard's red queue, and another approver's review after the fact. Screenshots of the
enrolment page, the break-glass form and the red queue at both widths."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.utils import timezone
from playwright.sync_api import Page, expect

from incidents import workflow
from incidents.models import AuditEvent, BreakGlassPostReview, DraftKind, Review, ReviewDecision
from tests.factories import IncidentFactory

from .pagecheck import WIDTHS, Findings, inspecting_context, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FIELDS = {
    "title": "Login failures",
    "severity": "major",
    "description": "Some sign-ins fail.",
    "stage": "investigating",
}


def code_for(secret: str, steps_ahead: int = 0) -> str:
    """What an authenticator app shows now (or one 30-second step later: still inside the accepted window)."""
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30 + steps_ahead))


def inspect_at_both_widths(
    browser, findings: Findings, base: str, username: str, password: str, path: str, name: str, prepare=None
) -> None:
    for width in WIDTHS:
        context = inspecting_context(browser, width)
        page = context.new_page()
        sign_in(page, base, username, password)
        page.goto(base + path)
        if prepare:
            prepare(page)
        findings.inspect(page, name)
        context.close()


def test_an_approver_enrols_breaks_the_glass_and_another_reviews_it_after_the_fact(
    live_server, browser, approver, approver2, api_service, password, csp_violations, page: Page, no_broker
):
    base, findings = live_server.url, Findings()
    inspect_at_both_widths(browser, findings, base, "approver", password, "/account/authenticator/", "mfa-enrolment")

    # Enrol: the key on the page, the code the app would show.
    sign_in(page, base, "approver", password)
    page.goto(f"{base}/account/authenticator/")
    expect(page.locator("#totp-qr svg")).to_be_visible()
    secret = page.locator("#totp-secret").inner_text().strip()
    page.fill("#id_code", "000000" if code_for(secret) != "000000" else "111111")
    page.click("text=Enrol")
    expect(page.locator(".field-error")).to_contain_text("does not match")
    page.fill("#id_code", code_for(secret))
    page.click("text=Enrol")
    expect(page.locator("#recovery-codes li")).to_have_count(10)

    # The approver's own revision, and nobody else answers.
    draft = workflow.create(user=approver, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    workflow.submit(draft_id=draft.pk, user=approver)
    review_path = f"/drafts/{draft.pk}/review/"

    def open_break_glass(p: Page) -> None:
        p.click("#break-glass summary")
        expect(p.locator("#id_reason")).to_be_visible()

    inspect_at_both_widths(
        browser, findings, base, "approver", password, review_path, "review-break-glass-form", open_break_glass
    )

    page.goto(base + review_path)
    expect(page.locator("#own-revision")).to_be_visible()
    open_break_glass(page)
    # A wrong code: refused by the server, the form open again with the reason kept, nothing published.
    page.fill("#id_reason", "Login outage; approver2 does not answer the phone.")
    page.fill("#id_code", "000000" if code_for(secret, 1) != "000000" else "111111")
    page.click("#break-glass-form button[type=submit]")
    expect(page.locator("#break-glass .error-box")).to_contain_text("not the one your authenticator app shows")
    expect(page.locator("#id_reason")).to_have_value("Login outage; approver2 does not answer the phone.")
    assert not Review.objects.exists()
    page.fill("#id_code", code_for(secret, 1))
    page.click("#break-glass-form button[type=submit]")
    expect(page).to_have_url(re.compile(rf"/drafts/{draft.pk}/$"))
    expect(page.locator("#latest-review")).to_contain_text("break-glass")
    review = Review.objects.get()
    assert review.decision == ReviewDecision.BREAK_GLASS and review.reviewer == approver

    page.goto(base + "/")
    expect(page.locator("#banner-break-glass")).to_contain_text("Login failures")
    inspect_at_both_widths(browser, findings, base, "approver", password, "/", "dashboard-break-glass")

    # The one who broke the glass cannot review it; approver2 can.
    page.goto(base + review_path)
    expect(page.locator("#post-review-waiting")).to_be_visible()
    inspect_at_both_widths(
        browser, findings, base, "approver2", password, review_path, "review-break-glass-post-review"
    )
    other = browser.new_context().new_page()
    sign_in(other, base, "approver2", password)
    expect(other.locator("#banner-break-glass")).to_be_visible()
    other.click("#banner-break-glass a")
    other.fill("#post-review-form textarea", "Words were right; no follow-up needed.")
    other.click("text=Mark as reviewed")
    expect(other.locator("#post-review-done")).to_contain_text("approver2")
    assert BreakGlassPostReview.objects.get().reviewer == approver2
    other.goto(base + "/")
    expect(other.locator("#banner-break-glass")).to_have_count(0)

    assert csp_violations == []
    findings.assert_clean()


def test_an_overdue_update_shows_on_the_incident_page_and_the_dashboard(
    live_server, browser, responder, api_service, password, csp_violations, page: Page
):
    base, findings = live_server.url, Findings()
    incident = IncidentFactory(
        service=api_service,
        remote_id="inc-late",
        title="Checkout errors",
        next_update_due_at=timezone.now() - timedelta(minutes=7),
    )
    path = f"/incidents/{incident.pk}/"
    inspect_at_both_widths(browser, findings, base, "responder", password, path, "incident-update-overdue")
    inspect_at_both_widths(browser, findings, base, "responder", password, "/", "dashboard-update-overdue")

    sign_in(page, base, "responder", password)
    expect(page.locator("#banner-overdue")).to_contain_text("Checkout errors")
    page.click("#banner-overdue a")
    expect(page.locator("#overdue-flag")).to_contain_text("Update overdue")
    # The responder gives the team 20 more minutes: no longer overdue, and it is audited.
    page.fill("#id_minutes", "20")
    page.click("#next-update button[type=submit]")
    expect(page.locator("#overdue-flag")).to_have_count(0)
    expect(page.locator("#next-update")).not_to_contain_text("overdue")
    assert AuditEvent.objects.filter(action="incident.next_update_due_set", actor_id=responder.pk).exists()
    assert csp_violations == []
    findings.assert_clean()
