"""Where issue 12's features meet, in the browser: a scheduled update of an incident across two services (the draft
page's cancel per service, saying the other stays scheduled) and the review of the next update, which shows the order
on each service's IsDown incident. Both pages fit 1280 px and 390 px, pass axe, and are screenshotted."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, expect

from incidents import workflow
from incidents.models import DraftKind, IncidentGroup
from tests.factories import IncidentFactory

from .pagecheck import WIDTHS, Findings, inspecting_context, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
FIELDS = {"title": "API errors", "severity": "major", "description": "Maintenance at 08:00.", "stage": "identified"}


@pytest.mark.parametrize("width", list(WIDTHS))
def test_a_scheduled_grouped_update_and_the_next_review(
    live_server,
    browser: Browser,
    responder,
    approver,
    platform,
    api_service,
    dashboard_service,
    password,
    width,
    no_broker,
):
    group = IncidentGroup.objects.create(team=platform, title="API errors")
    api = IncidentFactory(service=api_service, remote_id="5001", title="API errors", severity="major", group=group)
    IncidentFactory(service=dashboard_service, remote_id="5002", title="API errors", severity="major", group=group)
    first = workflow.create_and_submit(
        user=responder, service=api_service, kind=DraftKind.UPDATE, incident=api, fields=FIELDS
    )
    api_pub, dashboard_pub = workflow.approve(
        draft_id=first.draft_id,
        revision_id=first.pk,
        reviewer=approver,
        sha256=first.sha256,
        publish_at=timezone.now() + timedelta(hours=3),
    ).publications
    second = workflow.create_and_submit(
        user=responder,
        service=api_service,
        kind=DraftKind.UPDATE,
        incident=api,
        fields={**FIELDS, "description": "Cause identified: a bad deploy."},
    )

    base, findings = live_server.url, Findings()
    context = inspecting_context(browser, width)
    page = context.new_page()
    sign_in(page, base, "approver", password)
    page.goto(f"{base}/drafts/{first.draft_id}/")
    expect(page.get_by_role("button", name="Cancel the scheduled publication to API")).to_be_visible()
    expect(page.locator(f"#cancel-scope-{dashboard_pub.pk}")).to_contain_text("only this service")
    findings.inspect(page, "draft-scheduled-grouped")
    page.goto(f"{base}/drafts/{second.draft_id}/review/")
    expect(page.locator("#order-5001")).to_contain_text(f"Publication #{api_pub.pk}")
    expect(page.locator("#order-5002")).to_contain_text(f"Publication #{dashboard_pub.pk}")
    findings.inspect(page, "review-order-grouped")
    context.close()
    findings.assert_clean()
