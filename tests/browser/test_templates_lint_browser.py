"""Templates, the public-text lint and corrections in a real browser: an approver writes a template, a responder
picks it (the form fills, no inline script: strict CSP), the lint highlights what should not be public while
typing and again on the review, where an approver accepts a warning; and every new screen is inspected and
photographed at both widths (pagecheck.Findings)."""

from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from incidents.models import AcceptedWarning, AuditEvent, Draft, DraftTemplate, IncidentUpdate
from tests.factories import IncidentFactory

from .pagecheck import WIDTHS, Findings, inspecting_context, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LEAKY = "Failover of db-01.prod.internal to 10.0.3.17 done; ask ops@example.com. Traceback (most recent call last)"


def write_template(page: Page, base: str, team_id: int) -> None:
    page.goto(f"{base}/teams/{team_id}/templates/")
    page.click("text=New template")
    page.fill("#id_name", "Elevated errors")
    page.select_option("#id_kind", "open")
    page.fill("#id_title", "Elevated errors on {services}")
    page.select_option("#id_severity", "major")
    page.select_option("#id_stage", "investigating")
    page.fill("#id_description", "Since {started_at} some requests to {services} fail. {next_update}")
    page.click("button.primary")
    expect(page.locator("#template-table")).to_contain_text("Elevated errors")


def test_template_picked_fills_the_form_and_the_lint_marks_what_should_not_be_public(
    live_server, browser: Browser, responder, approver, api_service, dashboard_service, password, csp_violations, page
):
    base = live_server.url
    sign_in(page, base, "approver", password)
    write_template(page, base, api_service.team_id)
    assert AuditEvent.objects.filter(action="template.created", actor_label="approver").exists()
    page.context.clear_cookies()

    sign_in(page, base, "responder", password)
    page.goto(f"{base}/drafts/new/")
    page.select_option("#id_service", label="API (#1001)")  # the team has two: the template names the chosen one
    # Choosing in the select is enough: static/js/app.js submits the picker (a GET with ?template=).
    page.select_option("#id_template", label="Elevated errors (new incident)")
    expect(page.locator("#id_service")).to_have_value(str(api_service.pk))
    expect(page.locator("#id_title")).to_have_value("Elevated errors on API")
    expect(page.locator("#id_description")).to_contain_text("some requests to API fail.")
    expect(page.locator("#id_severity")).to_have_value("major")
    # The unknown placeholder stays and is flagged before anything is typed.
    expect(page.locator("#lint-warnings mark", has_text="{next_update}")).to_be_visible()

    page.fill("#id_description", LEAKY)
    page.locator("#id_description").blur()
    lint = page.locator("#lint-warnings")
    expect(lint.locator("mark", has_text="10.0.3.17")).to_be_visible()
    for rule in ("internal-host", "private-ip", "email-address", "stack-trace"):
        expect(lint.locator(f'[data-rule="{rule}"]').first).to_be_visible()
    page.click("button[value=submit]")
    expect(page.locator("#draft-state")).to_have_text("In review")
    assert csp_violations == []
    draft = Draft.objects.get()
    page.context.clear_cookies()

    sign_in(page, base, "approver", password)
    page.goto(f"{base}/drafts/{draft.pk}/review/")
    warning = page.locator('#lint-warnings [data-rule="private-ip"]')
    expect(page.locator("#lint-warnings mark", has_text="10.0.3.17")).to_be_visible()
    warning.get_by_role("button", name="Accept the private-ip warning").click()
    expect(page.locator('#lint-warnings [data-rule="private-ip"]')).to_contain_text("Accepted")
    expect(page.locator('#lint-warnings [data-rule="email-address"] button')).to_be_visible()
    assert AcceptedWarning.objects.get().text == "10.0.3.17"
    assert AuditEvent.objects.filter(action="review.warning_accepted").count() == 1
    assert csp_violations == []


@pytest.fixture
def screens(responder, approver, api_service):
    from incidents import workflow

    template = DraftTemplate.objects.create(
        team=api_service.team,
        kind="resolve",
        name="Resolved",
        stage="resolved",
        description="{services} works normally again since {now}.",
    )
    incident = IncidentFactory(service=api_service, remote_id="5151", title="Slow API")
    IncidentUpdate.objects.create(
        incident=incident, position=0, stage="identified", description="A bad deploy.", remote_created_at=timezone.now()
    )
    draft = workflow.create(
        user=responder,
        service=api_service,
        kind="open",
        fields={"title": "API DOWN", "severity": "major", "stage": "investigating", "description": LEAKY},
    )
    workflow.submit(draft_id=draft.pk, user=responder)
    return {"template": template, "incident": incident, "draft": draft}


@pytest.mark.parametrize("width", list(WIDTHS))
def test_new_screens_fit_pass_axe_and_are_photographed(live_server, browser: Browser, screens, password, width):
    base, findings = live_server.url, Findings()
    team_id = screens["template"].team_id
    context = inspecting_context(browser, width)
    page = context.new_page()
    sign_in(page, base, "approver", password)
    page.goto(f"{base}/teams/{team_id}/templates/")
    findings.inspect(page, "template-list")
    page.goto(f"{base}/teams/{team_id}/templates/{screens['template'].pk}/")
    findings.inspect(page, "template-edit")
    page.goto(f"{base}/teams/{team_id}/templates/new/")
    page.click("button.primary")  # empty: the errors shown
    expect(page.locator(".field-error").first).to_be_visible()
    findings.inspect(page, "template-new-errors")
    page.goto(f"{base}/drafts/{screens['draft'].pk}/review/")
    expect(page.locator("#lint-warnings mark").first).to_be_visible()
    findings.inspect(page, "review-warnings")
    context.close()

    context = inspecting_context(browser, width)
    page = context.new_page()
    sign_in(page, base, "responder", password)
    page.goto(f"{base}/drafts/new/")
    page.fill("#id_description", LEAKY)
    page.locator("#id_description").blur()
    expect(page.locator("#lint-warnings mark").first).to_be_visible()
    findings.inspect(page, "draft-form-warnings")
    page.goto(f"{base}/incidents/{screens['incident'].pk}/update/?resolve=1")
    expect(page.locator("#id_description")).to_contain_text("API works normally again")
    findings.inspect(page, "resolve-from-template")
    page.goto(f"{base}/incidents/{screens['incident'].pk}/")
    page.click("#correct-last-update")
    expect(page.locator("#id_description")).to_have_value("Correction: A bad deploy.")
    expect(page.locator("#correction-note")).to_be_visible()
    findings.inspect(page, "correction-form")
    page.goto(f"{base}/teams/{team_id}/templates/")
    findings.inspect(page, "template-list-responder")
    context.close()
    findings.assert_clean()
