"""One incident across several services in the browser (issue 12): the draft form picks several services and
previews one request per service; the review lists every request; the grouped incident page shows each service's
state, a partial failure included. Each page fits 1280 px and 390 px, passes axe, and is screenshotted."""

from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, expect

from incidents import workflow
from incidents.models import (
    AttemptKind,
    AttemptOutcome,
    Draft,
    DraftKind,
    DraftState,
    Incident,
    Publication,
    PublicationState,
    PublishAttempt,
)

from .pagecheck import WIDTHS, Findings, inspecting_context, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FIELDS = {
    "title": "Elevated error rates",
    "severity": "major",
    "stage": "identified",
    "description": "Requests fail intermittently; rolling back a configuration change.",
}


@pytest.fixture
def world(responder, approver, api_service, dashboard_service, no_broker):
    """A grouped incident whose API create was published and whose Dashboard create IsDown refused, and a second
    multi-service draft in review."""
    revision = workflow.create_and_submit(
        user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS, also_services=[dashboard_service]
    )
    api_pub, dashboard_pub = workflow.approve(
        draft_id=revision.draft_id, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256
    ).publications
    draft = Draft.objects.get(pk=revision.draft_id)
    incident = Incident.objects.create(
        service=api_service,
        remote_id="5001",
        title=FIELDS["title"],
        severity="major",
        stage="identified",
        group=draft.group,
    )
    Publication.objects.filter(pk=api_pub.pk).update(
        state=PublicationState.PUBLISHED, incident=incident, remote_id="5001"
    )
    Publication.objects.filter(pk=dashboard_pub.pk).update(
        state=PublicationState.FAILED,
        attempts=1,
        last_error="IsDown refused the request: Service not found or not a custom service you own",
    )
    PublishAttempt.objects.create(
        publication=dashboard_pub,
        number=1,
        kind=AttemptKind.SEND,
        started_at=timezone.now(),
        finished_at=timezone.now(),
        method="POST",
        path="/api/v2/incidents",
        status_code=422,
        outcome=AttemptOutcome.REJECTED,
    )
    Draft.objects.filter(pk=draft.pk).update(state=DraftState.FAILED)
    in_review = workflow.create_and_submit(
        user=responder,
        service=api_service,
        kind=DraftKind.OPEN,
        fields={**FIELDS, "title": "Login failures"},
        also_services=[dashboard_service],
    )
    return {"incident": incident, "in_review": in_review.draft_id}


@pytest.mark.parametrize("width", list(WIDTHS))
def test_the_multi_service_pages_fit_and_pass_axe(live_server, browser: Browser, world, password, width):
    base, findings = live_server.url, Findings()
    context = inspecting_context(browser, width)
    page = context.new_page()
    sign_in(page, base, "responder", password)

    page.goto(f"{base}/drafts/new/")
    page.select_option("#id_service", label="API (#1001)")
    page.get_by_label("Dashboard (#1002)").check()
    page.fill("#id_title", "Checkout and dashboard errors")
    page.fill("#id_description", "Both fail for some users.")
    page.click("button[value=preview]")
    expect(page.locator("#preview-body h3").nth(1)).to_have_text("2 requests to IsDown, one per service")
    expect(page.locator(".request-preview")).to_have_count(2)
    findings.inspect(page, "draft-new-several-services")

    page.goto(f"{base}/incidents/{world['incident'].pk}/")
    rows = page.locator(".services-table tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator('[data-service="API"] [data-summary]')).to_have_text("Published")
    expect(page.locator('[data-service="Dashboard"] [data-summary]')).to_have_text("Failed")
    expect(page.get_by_role("button", name="Edit and resubmit")).to_be_visible()
    findings.inspect(page, "incident-grouped-partial-failure")
    context.close()

    context = inspecting_context(browser, width)
    page = context.new_page()
    sign_in(page, base, "approver", password)
    page.goto(f"{base}/drafts/{world['in_review']}/review/")
    expect(page.locator(".revision-request")).to_have_count(2)
    expect(page.locator(".exact-request")).to_have_attribute("open", "")
    findings.inspect(page, "review-several-services")
    context.close()
    findings.assert_clean()
