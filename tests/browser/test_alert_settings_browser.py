"""Drafts from alerts (issue 12 §6): the team's alert page in a real browser, as an approver creates a token, maps a
label to a service and receives a first alert; inspected at both widths (tests/browser/pagecheck.py), with a
screenshot of each state."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from playwright.sync_api import Browser, expect

from incidents.models import AlertRoute, AuditEvent, Draft

from .pagecheck import WIDTHS, Findings, inspecting_context, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("width", list(WIDTHS))
def test_an_approver_rotates_the_token_and_maps_a_label(
    live_server, browser: Browser, platform, approver, api_service, dashboard_service, password, width, no_broker
):
    base, findings = live_server.url, Findings()
    context = inspecting_context(browser, width)
    page = context.new_page()
    sign_in(page, base, "approver", password)
    page.goto(f"{base}/account/")
    page.click(f"text=Alerts of {platform.name}")
    expect(page.locator("h1")).to_contain_text("Drafts from alerts")
    findings.inspect(page, "alerts-empty")

    page.click("button:has-text('Create a token')")
    token = page.locator(".alert-token").inner_text().strip()
    assert token.startswith("isdown_alerts_")
    findings.inspect(page, "alerts-token-shown-once")

    page.fill("#id_label_name", "service")
    page.fill("#id_label_value", "api")
    page.select_option("#id_service", str(api_service.pk))
    page.click("button:has-text('Add')")
    expect(page.locator(".alert-routes")).to_contain_text('service="api"')
    assert AlertRoute.objects.filter(label_value="api", service=api_service).exists()
    assert token not in page.content()  # shown once: gone after the next page load

    body = {"source": "uptime", "status": "firing", "fingerprint": "f1", "labels": {"service": "api"}, "title": "Down"}
    answer = Client().post(
        f"/hooks/alerts/{platform.pk}/", json.dumps(body), "application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert answer.json()["alerts"][0]["outcome"] == "draft_created"
    page.reload()
    expect(page.locator("text=draft #")).to_be_visible()
    findings.inspect(page, "alerts-mapped")
    assert Draft.objects.count() == 1
    assert AuditEvent.objects.filter(action="alert.token_rotated").exists()
    context.close()
    findings.assert_clean()
