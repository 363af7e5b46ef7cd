"""Scheduled publication (issue 12 §7): the review page of an update while another change to the same incident is
scheduled, with the "Publish at" field and the incident's resulting order, then the scheduled publication's own
block; inspected at both widths (tests/browser/pagecheck.py), a screenshot of each."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, expect

from incidents import workflow
from incidents.models import DraftKind
from tests.factories import IncidentFactory

from .pagecheck import WIDTHS, Findings, inspecting_context, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
FIELDS = {"title": "API errors", "severity": "major", "description": "Maintenance at 08:00.", "stage": "identified"}


@pytest.mark.parametrize("width", list(WIDTHS))
def test_the_review_page_shows_the_order_and_the_schedule(
    live_server, browser: Browser, responder, approver, api_service, password, width, no_broker
):
    incident = IncidentFactory(service=api_service, remote_id="4242", title="API errors", severity="major")
    first = workflow.create(
        user=responder, service=api_service, kind=DraftKind.UPDATE, incident=incident, fields=FIELDS
    )
    revision = workflow.submit(draft_id=first.pk, user=responder)
    scheduled = workflow.approve(
        draft_id=first.pk,
        revision_id=revision.pk,
        reviewer=approver,
        sha256=revision.sha256,
        publish_at=timezone.now() + timedelta(hours=3),
    ).publications[0]
    fields = {**FIELDS, "description": "Cause identified: a bad deploy."}
    second = workflow.create(
        user=responder, service=api_service, kind=DraftKind.UPDATE, incident=incident, fields=fields
    )
    workflow.submit(draft_id=second.pk, user=responder)

    base, findings = live_server.url, Findings()
    context = inspecting_context(browser, width)
    page = context.new_page()
    sign_in(page, base, "approver", password)
    page.goto(f"{base}/drafts/{second.pk}/review/")
    expect(page.locator(".publication-order")).to_contain_text(f"Publication #{scheduled.pk}")
    expect(page.locator("#id_publish_at")).to_be_visible()
    findings.inspect(page, "review-scheduling")
    page.goto(f"{base}/publications/{scheduled.pk}/")
    expect(page.locator(f"#scheduled-{scheduled.pk}")).to_contain_text("Scheduled for")
    findings.inspect(page, "publication-scheduled")
    context.close()
    findings.assert_clean()
