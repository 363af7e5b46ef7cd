"""Draft templates: filling (plain substitution over a fixed list), the team's pages (approvers manage, every
change audited, other teams see nothing), the picker on the draft form, the Resolve form's default, the demo."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.core.management import call_command

from incidents import draft_templates
from incidents.models import AuditEvent, DraftTemplate, TemplateKind

from .factories import IncidentFactory

pytestmark = pytest.mark.django_db

TEMPLATE_FIELDS = {
    "name": "Outage",
    "kind": "open",
    "title": "{services} unavailable",
    "severity": "major",
    "stage": "investigating",
    "description": "Since {started_at}, {services} is down. {unknown} {team}",
}


def make_template(team, **overrides) -> DraftTemplate:
    return DraftTemplate.objects.create(team=team, **{**TEMPLATE_FIELDS, **overrides})


# --- fill ---------------------------------------------------------------------------------------------------------
def test_fill_replaces_known_placeholders_and_leaves_unknown_ones():
    filled = draft_templates.fill(TEMPLATE_FIELDS, {"services": "API", "started_at": "09:00", "team": "Platform"})
    assert filled == {
        "title": "API unavailable",
        "severity": "major",
        "stage": "investigating",
        "description": "Since 09:00, API is down. {unknown} Platform",
    }


def test_fill_never_evaluates_the_template_text():
    template = {"title": "{{ settings.SECRET_KEY }} {services.__class__} {% debug %}", "description": "{0} %s {}"}
    filled = draft_templates.fill(template, {"services": "API"})
    assert filled["title"] == template["title"]
    assert filled["description"] == template["description"]


def test_fill_ignores_values_that_are_not_placeholders_and_keeps_a_known_one_without_a_value():
    filled = draft_templates.fill({"title": "{secret} {services}", "description": ""}, {"secret": "x"})
    assert filled["title"] == "{secret} {services}"


def test_fill_substitutes_values_literally():
    # A value holding a placeholder is not expanded again, and braces in a value are kept as text.
    filled = draft_templates.fill({"title": "{incident_title} on {services}"}, {"incident_title": "{services}"})
    assert filled["title"] == "{services} on {services}"


def test_values_for_an_update_name_the_incident(platform, api_service):
    incident = IncidentFactory(
        service=api_service, remote_id="1", title="Slow API", remote_created_at=datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    )
    values = draft_templates.values_for(team=platform, incident=incident)
    assert values["services"] == "API"
    assert values["incident_title"] == "Slow API"
    assert values["started_at"] == "2026-03-01 09:30 UTC"
    assert values["team"] == platform.name


def test_for_team_lists_only_that_teams_templates_of_that_kind(platform, data_team):
    mine = make_template(platform, name="Mine")
    make_template(platform, name="Resolve", kind="resolve")
    make_template(data_team, name="Theirs")
    assert list(draft_templates.for_team(platform, TemplateKind.OPEN)) == [mine]


# --- The team's pages ---------------------------------------------------------------------------------------------
def url(team, suffix=""):
    return f"/teams/{team.pk}/templates/{suffix}"


def test_approver_creates_a_template_and_the_audit_log_records_every_field(as_user, approver, platform):
    response = as_user(approver).post(url(platform, "new/"), TEMPLATE_FIELDS)
    assert response.status_code == 302
    template = DraftTemplate.objects.get(team=platform)
    assert template.title == "{services} unavailable"
    event = AuditEvent.objects.get(action="template.created")
    assert event.actor_label == approver.username
    assert event.team_id == platform.pk
    assert event.changes["title"] == [None, "{services} unavailable"]
    assert event.changes["kind"] == [None, "open"]


def test_approver_edits_a_template_and_the_audit_log_has_old_and_new(as_user, approver, platform):
    template = make_template(platform)
    response = as_user(approver).post(
        url(platform, f"{template.pk}/"), {**TEMPLATE_FIELDS, "title": "Down: {services}"}
    )
    assert response.status_code == 302
    template.refresh_from_db()
    assert template.title == "Down: {services}"
    event = AuditEvent.objects.get(action="template.changed")
    assert event.changes == {"title": ["{services} unavailable", "Down: {services}"]}


def test_saving_an_unchanged_template_records_nothing(as_user, approver, platform):
    template = make_template(platform)
    as_user(approver).post(url(platform, f"{template.pk}/"), TEMPLATE_FIELDS)
    assert not AuditEvent.objects.filter(action="template.changed").exists()


def test_approver_deletes_a_template_and_the_audit_log_keeps_its_text(as_user, approver, platform):
    template = make_template(platform)
    response = as_user(approver).post(url(platform, f"{template.pk}/delete/"))
    assert response.status_code == 302
    assert not DraftTemplate.objects.exists()
    event = AuditEvent.objects.get(action="template.deleted")
    assert event.changes["description"][0] == TEMPLATE_FIELDS["description"]
    assert event.target_label.startswith("Outage")


def test_a_second_template_of_the_same_name_is_refused_with_a_message(as_user, approver, platform):
    make_template(platform)
    response = as_user(approver).post(url(platform, "new/"), {**TEMPLATE_FIELDS, "name": "outage"})
    assert response.status_code == 422
    assert "already has a template named" in response.content.decode()
    assert DraftTemplate.objects.count() == 1


def test_a_resolve_template_always_resolves(as_user, approver, platform):
    response = as_user(approver).post(
        url(platform, "new/"), {**TEMPLATE_FIELDS, "kind": "resolve", "stage": "identified"}
    )
    assert response.status_code == 422
    as_user(approver).post(url(platform, "new/"), {**TEMPLATE_FIELDS, "kind": "resolve", "stage": ""})
    assert DraftTemplate.objects.get().stage == "resolved"


@pytest.mark.parametrize("persona", ["responder", "auditor"])
def test_only_approvers_manage_templates(request, as_user, platform, persona):
    user = request.getfixturevalue(persona)
    template = make_template(platform)
    client = as_user(user)
    assert client.get(url(platform)).status_code == 200  # the team reads them
    assert "New template" not in client.get(url(platform)).content.decode()
    assert client.post(url(platform, "new/"), {**TEMPLATE_FIELDS, "name": "Other"}).status_code == 403
    assert client.post(url(platform, f"{template.pk}/"), {**TEMPLATE_FIELDS, "title": "x"}).status_code == 403
    assert client.post(url(platform, f"{template.pk}/delete/")).status_code == 403
    template.refresh_from_db()
    assert template.title == TEMPLATE_FIELDS["title"]
    assert DraftTemplate.objects.count() == 1
    assert not AuditEvent.objects.filter(action__startswith="template.").exists()


def test_another_teams_templates_are_not_found(as_user, outsider, approver, platform, data_team):
    template = make_template(platform)
    client = as_user(outsider)
    assert client.get(url(platform)).status_code == 404
    assert client.get(url(platform, f"{template.pk}/")).status_code == 404
    # An approver of Platform cannot reach a Data template through Platform's URL either.
    theirs = make_template(data_team)
    assert as_user(approver).get(url(platform, f"{theirs.pk}/")).status_code == 404
    assert as_user(approver).post(url(platform, f"{theirs.pk}/delete/")).status_code == 404
    assert DraftTemplate.objects.filter(pk=theirs.pk).exists()


def test_template_pages_need_csrf(approver, platform):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(approver)
    assert client.post(url(platform, "new/"), TEMPLATE_FIELDS).status_code == 403
    assert not DraftTemplate.objects.exists()


# --- The picker on the draft form ---------------------------------------------------------------------------------
def test_picking_a_template_fills_the_new_incident_form(as_user, responder, platform, api_service):
    template = make_template(platform)
    page = as_user(responder).get(f"/drafts/new/?template={template.pk}").content.decode()
    assert 'value="API unavailable"' in page
    assert "Since " in page and ", API is down. {unknown} Platform" in page
    assert 'value="major" selected' in page
    assert f'<option value="{template.pk}" selected>' in page
    # The unknown placeholder left in the text is flagged before anything is typed.
    assert 'data-rule="placeholder"' in page
    assert "<mark>{unknown}</mark>" in page


def test_with_several_services_the_chosen_one_fills_services(
    as_user, responder, platform, api_service, dashboard_service
):
    template = make_template(platform)
    client = as_user(responder)
    page = client.get(f"/drafts/new/?template={template.pk}").content.decode()
    assert 'value="{services} unavailable"' in page  # none chosen yet: left for the lint to flag
    page = client.get(f"/drafts/new/?template={template.pk}&service={dashboard_service.pk}").content.decode()
    assert 'value="Dashboard unavailable"' in page
    assert f'<option value="{dashboard_service.pk}" selected>' in page


def test_the_picker_offers_only_my_teams_templates(as_user, responder, platform, data_team, api_service):
    mine, theirs = make_template(platform), make_template(data_team, name="Theirs")
    page = as_user(responder).get("/drafts/new/").content.decode()
    assert f'<option value="{mine.pk}"' in page
    assert f'<option value="{theirs.pk}"' not in page
    # Asking for another team's template by id fills nothing.
    page = as_user(responder).get(f"/drafts/new/?template={theirs.pk}").content.decode()
    assert "unavailable" not in page


@pytest.mark.parametrize("bad", ["x", "-1", "99999999999999999999999", ""])
def test_a_bad_template_parameter_is_ignored(as_user, responder, api_service, bad):
    assert as_user(responder).get(f"/drafts/new/?template={bad}").status_code == 200


def test_an_update_template_fills_the_update_form(as_user, responder, platform, api_service):
    incident = IncidentFactory(service=api_service, remote_id="77", title="Slow API")
    template = make_template(
        platform,
        kind="update",
        name="Identified",
        title="",
        severity="",
        stage="identified",
        description="We found the cause of “{incident_title}”.",
    )
    page = as_user(responder).get(f"/incidents/{incident.pk}/update/?template={template.pk}").content.decode()
    assert "We found the cause of “Slow API”." in page
    assert 'value="identified" selected' in page
    assert 'value="Slow API"' in page  # an empty template title keeps the incident's


def test_the_teams_resolve_template_is_the_resolve_forms_default(as_user, responder, platform, api_service):
    incident = IncidentFactory(service=api_service, remote_id="78", title="Slow API")
    make_template(
        platform,
        kind="resolve",
        name="Resolved",
        stage="resolved",
        title="",
        description="{services} works normally again.",
    )
    page = as_user(responder).get(f"/incidents/{incident.pk}/update/?resolve=1").content.decode()
    assert "API works normally again." in page
    assert "This incident has been resolved." not in page
    assert 'value="resolved" selected' in page


def test_without_a_resolve_template_the_resolve_form_has_the_usual_words(as_user, responder, api_service):
    incident = IncidentFactory(service=api_service, remote_id="79")
    page = as_user(responder).get(f"/incidents/{incident.pk}/update/?resolve=1").content.decode()
    assert "This incident has been resolved." in page


def test_seed_demo_gives_each_team_templates_of_every_kind(settings):
    settings.DEBUG = True
    call_command("seed_demo")
    call_command("seed_demo")  # idempotent
    for team_name in ("Platform", "Data"):
        kinds = set(DraftTemplate.objects.filter(team__name=team_name).values_list("kind", flat=True))
        assert kinds == {"open", "update", "resolve"}
    assert AuditEvent.objects.filter(action="template.created").count() == DraftTemplate.objects.count()
