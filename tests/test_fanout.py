"""One incident across several services (issue 12): the draft names several services, the revision holds one
exact request per service under one SHA-256, approval makes one publication per service and groups them; updates
of a grouped incident fan out to every open service; adding and removing a service are reviewed changes."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from incidents import isdown, workflow
from incidents.models import (
    AuditEvent,
    DraftKind,
    DraftState,
    Incident,
    IncidentGroup,
    Publication,
    PublicationState,
    Stage,
)

from .factories import IncidentFactory, ServiceFactory

pytestmark = pytest.mark.django_db

FIELDS = {"title": "API errors", "severity": "major", "description": "Elevated 5xx on /v1.", "stage": "investigating"}


@pytest.fixture
def status_service(platform):
    return ServiceFactory(team=platform, name="Status API", isdown_service_id=1003)


@pytest.fixture
def grouped(api_service, dashboard_service, platform):
    """A published incident on API and Dashboard, grouped."""
    group = IncidentGroup.objects.create(team=platform, title="API errors")
    api = IncidentFactory(service=api_service, remote_id="5001", title="API errors", group=group)
    dashboard = IncidentFactory(service=dashboard_service, remote_id="5002", title="API errors", group=group)
    return group, api, dashboard


def _approve(draft_id: int, approver) -> workflow.Decision:
    revision = workflow.latest_revision(workflow.Draft.objects.get(pk=draft_id))
    assert revision is not None
    return workflow.approve(draft_id=draft_id, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256)


# --- A new incident on several services ----------------------------------------------------------------------
def test_submit_makes_one_create_per_service_under_one_hash(responder, api_service, dashboard_service):
    revision = workflow.create_and_submit(
        user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS, also_services=[dashboard_service]
    )
    requests = list(revision.requests.order_by("position"))
    assert [(r.service.name, r.method, r.path) for r in requests] == [
        ("API", "POST", "/api/v2/incidents"),
        ("Dashboard", "POST", "/api/v2/incidents"),
    ]
    assert [json.loads(r.body)["service_id"] for r in requests] == [1001, 1002]
    # The one hash an approver approves covers both requests, in order.
    assert revision.sha256 == isdown.requests_sha256([(r.position, r.sha256) for r in requests])
    assert AuditEvent.objects.filter(action="draft.created").get().changes["services"] == [None, ["API", "Dashboard"]]


def test_a_service_of_another_team_is_refused(responder, api_service, pipeline_service):
    with pytest.raises(workflow.NotAllowed, match="Pipeline belongs to another team"):
        workflow.create(
            user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS, also_services=[pipeline_service]
        )


def test_approval_makes_one_publication_per_service_and_one_group(responder, approver, api_service, dashboard_service):
    revision = workflow.create_and_submit(
        user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS, also_services=[dashboard_service]
    )
    decision = _approve(revision.draft_id, approver)
    assert [p.service.name for p in decision.publications] == ["API", "Dashboard"]
    assert {p.state for p in decision.publications} == {PublicationState.QUEUED}
    draft = workflow.Draft.objects.get(pk=revision.draft_id)
    assert draft.group is not None and draft.group.title == "API errors"
    assert AuditEvent.objects.filter(action="review.approved").get().changes["group"] == [None, draft.group.pk]


def test_one_service_draft_starts_no_group(responder, approver, api_service):
    revision = workflow.create_and_submit(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    _approve(revision.draft_id, approver)
    assert workflow.Draft.objects.get(pk=revision.draft_id).group is None
    assert not IncidentGroup.objects.exists()


def test_saving_can_change_the_other_services(responder, api_service, dashboard_service):
    draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    draft = workflow.save(
        draft_id=draft.pk, user=responder, expected_version=1, fields=FIELDS, also_services=[dashboard_service]
    )
    assert draft.service_ids == [api_service.pk, dashboard_service.pk]
    assert AuditEvent.objects.filter(action="draft.saved").get().changes["services"] == [
        ["API"],
        ["API", "Dashboard"],
    ]


# --- Updates and the resolve fan out -------------------------------------------------------------------------
def test_an_update_of_a_grouped_incident_goes_to_every_open_service(responder, approver, grouped):
    group, api, dashboard = grouped
    resolved = IncidentFactory(
        service=ServiceFactory(team=api.service.team, name="Old"), remote_id="5003", group=group, resolved=True
    )
    fields = {**FIELDS, "title": "API errors", "severity": api.severity, "stage": Stage.RESOLVED}
    revision = workflow.create_and_submit(
        user=responder, service=api.service, kind=DraftKind.UPDATE, fields=fields, incident=dashboard
    )
    requests = list(revision.requests.order_by("position"))
    assert [(r.method, r.path, r.target_remote_id) for r in requests] == [
        ("PATCH", "/api/v2/incidents/5001", "5001"),
        ("PATCH", "/api/v2/incidents/5002", "5002"),
    ]
    assert all(json.loads(r.body)["resolution_stage"] == "resolved" for r in requests)
    assert resolved.remote_id not in [r.target_remote_id for r in requests]
    decision = _approve(revision.draft_id, approver)
    # Each publication addresses its own incident: the order per IsDown incident holds per service.
    assert [(p.incident_id, p.target_remote_id) for p in decision.publications] == [
        (api.pk, "5001"),
        (dashboard.pk, "5002"),
    ]


# --- Adding and removing a service ---------------------------------------------------------------------------
def test_adding_a_service_is_a_reviewed_create_that_joins_the_group(responder, approver, grouped, status_service):
    group, api, _ = grouped
    fields = {
        "title": api.title,
        "severity": "major",
        "description": "Status API is affected too.",
        "stage": "identified",
    }
    revision = workflow.create_and_submit(
        user=responder, service=status_service, kind=DraftKind.ADD_SERVICE, fields=fields, incident=api
    )
    [request] = revision.requests.all()
    assert (request.method, request.path, json.loads(request.body)["service_id"]) == ("POST", "/api/v2/incidents", 1003)
    assert revision.draft.state == DraftState.IN_REVIEW
    decision = _approve(revision.draft_id, approver)
    assert decision.publication is not None and decision.publication.service == status_service
    assert workflow.Draft.objects.get(pk=revision.draft_id).group == group


def test_adding_a_service_to_an_ungrouped_incident_starts_a_group(responder, approver, api_service, dashboard_service):
    api = IncidentFactory(service=api_service, remote_id="6001", title="Slow")
    revision = workflow.create_and_submit(
        user=responder,
        service=dashboard_service,
        kind=DraftKind.ADD_SERVICE,
        fields={"title": "Slow", "severity": "minor", "description": "Also the dashboard.", "stage": "investigating"},
        incident=api,
    )
    _approve(revision.draft_id, approver)
    api.refresh_from_db()
    assert api.group is not None and workflow.Draft.objects.get(pk=revision.draft_id).group == api.group


def test_a_service_already_in_the_incident_cannot_be_added(responder, grouped):
    _, api, dashboard = grouped
    with pytest.raises(workflow.InvalidTransition, match="Dashboard is already part of this incident"):
        workflow.create(
            user=responder, service=dashboard.service, kind=DraftKind.ADD_SERVICE, fields=FIELDS, incident=api
        )


def test_removing_a_service_is_a_reviewed_resolve_of_its_incident_only(responder, approver, grouped):
    _, api, dashboard = grouped
    fields = {"title": api.title, "severity": api.severity, "description": "Dashboard is fine.", "stage": "resolved"}
    revision = workflow.create_and_submit(
        user=responder, service=dashboard.service, kind=DraftKind.REMOVE_SERVICE, fields=fields, incident=dashboard
    )
    [request] = revision.requests.all()
    assert (request.method, request.path) == ("PATCH", "/api/v2/incidents/5002")
    assert json.loads(request.body) == {"description": "Dashboard is fine.", "resolution_stage": "resolved"}
    decision = _approve(revision.draft_id, approver)
    assert [p.target_remote_id for p in decision.publications] == ["5002"]


def test_the_last_open_service_cannot_be_removed(responder, grouped):
    _, api, dashboard = grouped
    dashboard.resolved = True
    dashboard.save()
    with pytest.raises(workflow.InvalidTransition, match="only open service"):
        workflow.create(user=responder, service=api.service, kind=DraftKind.REMOVE_SERVICE, fields=FIELDS, incident=api)


def test_four_eyes_still_holds_for_a_fanned_out_revision(approver, approver2, api_service, dashboard_service):
    revision = workflow.create_and_submit(
        user=approver, service=api_service, kind=DraftKind.OPEN, fields=FIELDS, also_services=[dashboard_service]
    )
    with pytest.raises(workflow.NotAllowed):
        _approve(revision.draft_id, approver)
    assert not Publication.objects.exists()
    _approve(revision.draft_id, approver2)
    assert Publication.objects.count() == 2


# --- The pages ---------------------------------------------------------------------------------------------------
def test_the_form_submits_one_draft_for_several_services(responder, api_service, dashboard_service, as_user):
    response = as_user(responder).post(
        "/drafts/new/",
        {"service": api_service.pk, "also_services": [dashboard_service.pk], **FIELDS, "action": "submit"},
    )
    assert response.status_code == 302
    draft = workflow.Draft.objects.get()
    assert draft.service_ids == [api_service.pk, dashboard_service.pk]
    assert [r.service.name for r in draft.revisions.get().requests.order_by("position")] == ["API", "Dashboard"]


def test_the_form_refuses_a_service_outside_the_team(
    responder, api_service, dashboard_service, pipeline_service, as_user
):
    response = as_user(responder).post(
        "/drafts/new/", {"service": api_service.pk, "also_services": [pipeline_service.pk], **FIELDS, "action": "save"}
    )
    assert response.status_code == 422
    assert 'id="id_also_services_error"' in response.content.decode()
    assert "Select a valid choice" in response.content.decode()
    assert not workflow.Draft.objects.exists()


def test_the_form_refuses_mixing_teams_for_someone_in_both(
    responder, api_service, pipeline_service, data_team, as_user
):
    from incidents.models import Membership, Role

    Membership.objects.create(user=responder, team=data_team, role=Role.RESPONDER)
    response = as_user(responder).post(
        "/drafts/new/", {"service": api_service.pk, "also_services": [pipeline_service.pk], **FIELDS, "action": "save"}
    )
    assert response.status_code == 422
    assert "Pipeline belongs to another team than API" in response.content.decode()


def test_the_preview_shows_one_request_per_service(responder, api_service, dashboard_service, as_user):
    response = as_user(responder).post(
        "/drafts/new/",
        {"service": api_service.pk, "also_services": [dashboard_service.pk], **FIELDS, "action": "preview"},
    )
    html = response.content.decode()
    assert "2 requests to IsDown, one per service" in html
    assert html.count("&quot;service_id&quot;: 1001") == 1 and html.count("&quot;service_id&quot;: 1002") == 1


def test_the_review_lists_every_request_before_approval(responder, approver, api_service, dashboard_service, as_user):
    revision = workflow.create_and_submit(
        user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS, also_services=[dashboard_service]
    )
    html = as_user(approver).get(f"/drafts/{revision.draft_id}/review/").content.decode()
    assert '<details class="exact-request" open>' in html
    assert "The 2 exact requests that will be sent, one per service" in html
    assert 'id="revision-request-0"' in html and 'id="revision-request-1"' in html
    assert "To API (IsDown #1001)" in html and "To Dashboard (IsDown #1002)" in html


def test_the_incident_page_offers_adding_and_removing_services(responder, grouped, status_service, as_user):
    _, api, _ = grouped
    html = as_user(responder).get(f"/incidents/{api.pk}/").content.decode()
    assert 'data-service="API"' in html and 'data-service="Dashboard"' in html
    assert f'<option value="{status_service.pk}">Status API (#1003)</option>' in html
    assert f"/incidents/{api.pk}/update/?remove=1" in html
    page = as_user(responder).get(f"/incidents/{api.pk}/update/?add={status_service.pk}").content.decode()
    assert "Add Status API to this incident" in page


def test_adding_a_service_of_another_team_is_a_404(responder, grouped, pipeline_service, as_user):
    _, api, _ = grouped
    assert as_user(responder).get(f"/incidents/{api.pk}/update/?add={pipeline_service.pk}").status_code == 404
    assert as_user(responder).get(f"/incidents/{api.pk}/update/?add=nope").status_code == 404


def test_removing_a_service_through_the_page_submits_its_resolve(responder, grouped, as_user):
    _, _, dashboard = grouped
    response = as_user(responder).post(
        f"/incidents/{dashboard.pk}/update/?remove=1",
        {
            "title": dashboard.title,
            "severity": dashboard.severity,
            "stage": "resolved",
            "description": "Fine now.",
            "action": "submit",
        },
    )
    assert response.status_code == 302
    draft = workflow.Draft.objects.get()
    assert (draft.kind, draft.service, draft.state) == (
        DraftKind.REMOVE_SERVICE,
        dashboard.service,
        DraftState.IN_REVIEW,
    )
    [request] = draft.revisions.get().requests.all()
    assert request.path == "/api/v2/incidents/5002"


# --- The demo ----------------------------------------------------------------------------------------------------
def test_seed_demo_drafts_and_approves_one_incident_across_api_and_dashboard(settings, capsys):
    from django.core.management import call_command

    settings.DEBUG, settings.SANDBOX_ENABLED = True, True
    call_command("seed_demo")
    assert "Demo incident across API and Dashboard drafted and approved" in capsys.readouterr().out
    draft = workflow.Draft.objects.get(title="Elevated error rates on API and Dashboard")
    assert draft.state == DraftState.APPROVED and draft.group is not None
    assert draft.author.username == "responder" and draft.revisions.get().review.reviewer.username == "approver"
    assert [p.service.name for p in draft.publications.order_by("pk")] == ["API", "Dashboard"]
    drafts = workflow.Draft.objects.count()
    call_command("seed_demo")
    assert "nothing changed" in capsys.readouterr().out
    assert workflow.Draft.objects.count() == drafts  # the grouped one is made once (test_demo_data: the others)


def test_removing_the_only_service_sends_the_responder_back_with_the_reason(responder, api_service, as_user):
    incident = IncidentFactory(service=api_service, remote_id="7001")
    response = as_user(responder).get(f"/incidents/{incident.pk}/update/?remove=1", follow=True)
    assert response.redirect_chain == [(f"/incidents/{incident.pk}/", 302)]
    assert "only open service: resolve the incident instead" in response.content.decode()


def test_an_add_service_draft_is_edited_and_reviewed_like_any_other(
    responder, approver, grouped, status_service, as_user
):
    _, api, _ = grouped
    fields = {"title": api.title, "severity": "major", "description": "Status API too.", "stage": "identified"}
    draft = workflow.create(
        user=responder, service=status_service, kind=DraftKind.ADD_SERVICE, fields=fields, incident=api
    )
    client = as_user(responder)
    assert "Add a service draft #" in client.get(f"/drafts/{draft.pk}/").content.decode()
    response = client.post(
        f"/drafts/{draft.pk}/",
        {**fields, "description": "Status API is affected too.", "version": 1, "action": "submit"},
    )
    assert response.status_code == 302
    revision = workflow.latest_revision(workflow.Draft.objects.get(pk=draft.pk))
    assert json.loads(revision.requests.get().body)["description"] == "Status API is affected too."
    html = as_user(approver).get(f"/drafts/{draft.pk}/review/").content.decode()
    assert "To Status API (IsDown #1003)" in html and "notifies the status page" in html


def test_the_update_form_of_a_grouped_incident_says_where_it_goes(responder, grouped, as_user):
    _, api, _ = grouped
    html = as_user(responder).get(f"/incidents/{api.pk}/update/?resolve=1").content.decode()
    assert "This incident spans 2 services: the update goes to each one" in html
    assert "API #5001, Dashboard #5002" in html


def test_the_dashboard_lists_an_overdue_grouped_incident_once_naming_its_services(grouped, responder, as_user):
    _, api, dashboard = grouped
    due = timezone.now() - timedelta(minutes=5)
    Incident.objects.filter(pk__in=[api.pk, dashboard.pk]).update(next_update_due_at=due)
    page = as_user(responder).get(reverse("incidents:dashboard")).content.decode()
    banner = page.split('id="banner-overdue"', 1)[1].split("</div>", 1)[0]
    assert "1 incident overdue for an update" in banner
    assert banner.count("<li>") == 1 and "API, Dashboard" in banner
