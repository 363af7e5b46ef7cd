"""Every page each persona reaches, in the states that matter, at 1280 px and 390 px: it fits the window, axe-core
finds nothing critical or serious, it has a proper title, and a screenshot is written (tests/browser/pagecheck.py)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, expect

from incidents.models import Publication, PublicationState
from tests.factories import IncidentFactory
from tests.publishing.factories import approved_publication, update_publication

from .pagecheck import WIDTHS, Findings, inspecting_context, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def world(responder, approver, auditor, api_service, no_broker):
    from incidents import workflow

    incident = IncidentFactory(service=api_service, remote_id="4242", title="Elevated API errors")
    landed = update_publication(incident=incident, author=responder, description="Fixed the load balancer. " * 8)
    Publication.objects.filter(pk=landed.pk).update(state=PublicationState.PUBLISHED)
    failed = approved_publication(service=api_service, author=responder, title="Checkout is slow")
    Publication.objects.filter(pk=failed.pk).update(state=PublicationState.FAILED, last_error="422 title is invalid")
    in_review = workflow.create(
        user=responder,
        kind="open",
        service=api_service,
        fields={"title": "Login failures", "severity": "major", "stage": "investigating", "description": "Looking."},
    )
    workflow.submit(draft_id=in_review.pk, user=responder)
    # The audit page's signed checkpoints, background exports and a finished background verification.
    from incidents import checkpoints
    from incidents.models import AuditExport, AuditVerification

    checkpoints.sign_head("interval")
    AuditExport.objects.create(requested_by=approver, format="jsonl", up_to_seq=1, state="done", rows=12, size=4096)
    AuditExport.objects.create(requested_by=approver, format="csv", up_to_seq=1, state="failed", error="disk full")
    AuditVerification.objects.create(requested_by=approver, state="done", ok=True, total=9, checked=9, message="OK")
    return {"incident": incident, "failed": failed, "in_review": in_review}


@pytest.mark.parametrize("width", list(WIDTHS))
def test_every_page_fits_the_window_and_passes_axe(live_server, browser: Browser, world, password, width):
    base, findings = live_server.url, Findings()
    context = inspecting_context(browser, width)
    page = context.new_page()
    page.goto(f"{base}/accounts/login/")
    findings.inspect(page, "login")

    sign_in(page, base, "responder", password)
    findings.inspect(page, "dashboard-responder")
    page.goto(f"{base}/incidents/")
    findings.inspect(page, "incident-list")
    page.goto(f"{base}/incidents/{world['incident'].pk}/")
    findings.inspect(page, "incident")
    page.goto(f"{base}/drafts/new/")
    findings.inspect(page, "draft-new")
    page.click("button[value=save]")  # empty: every error shown
    expect(page.locator(".field-error").first).to_be_visible()
    findings.inspect(page, "draft-new-errors")
    page.goto(f"{base}/incidents/{world['incident'].pk}/update/")
    findings.inspect(page, "update-new")
    page.goto(f"{base}/drafts/{world['in_review'].pk}/")
    findings.inspect(page, "draft-in-review")
    page.goto(f"{base}/publications/{world['failed'].pk}/")
    findings.inspect(page, "publication-failed-responder")
    page.goto(f"{base}/accounts/password/")
    findings.inspect(page, "password")
    context.close()

    context = inspecting_context(browser, width)
    page = context.new_page()
    sign_in(page, base, "approver", password)
    findings.inspect(page, "dashboard-approver")
    page.goto(f"{base}/drafts/{world['in_review'].pk}/review/")
    findings.inspect(page, "review")
    page.goto(f"{base}/drafts/{world['failed'].revision.draft_id}/")
    findings.inspect(page, "draft-failed")
    page.goto(f"{base}/publications/{world['failed'].pk}/")
    findings.inspect(page, "publication-failed-approver")
    page.goto(f"{base}/audit/")
    page.locator("#audit-signing summary").click()  # the public key and the latest checkpoints
    findings.inspect(page, "audit-log")
    page.goto(f"{base}/services/{world['incident'].service_id}/")
    findings.inspect(page, "service")
    context.close()
    findings.assert_clean()
