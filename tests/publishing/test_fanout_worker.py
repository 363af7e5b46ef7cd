"""One incident across several services, end to end (issue 12): a real Celery worker publishes a reviewed draft
to the sandbox over real HTTP, one IsDown incident per service; one service fails while the other succeeds, the
incident page shows both, and the failed one is recovered on its own. Updates and the resolve then fan out to
every service, in order per service."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from incidents import publishing, workflow
from incidents.models import (
    AuditEvent,
    Draft,
    DraftKind,
    DraftState,
    Incident,
    Publication,
    PublicationState,
    Stage,
)
from sandbox.models import SandboxIncident
from sandbox.registry import register_service
from tests.factories import ServiceFactory
from tests.waiting import wait_for

from .conftest import sandbox_requests

pytestmark = pytest.mark.worker

S = PublicationState
FIELDS = {
    "title": "Checkout errors",
    "severity": "major",
    "description": "We are looking into it.",
    "stage": "investigating",
}


@pytest.fixture
def dashboard(team):
    """Service 1002 "Dashboard": NOT known to the sandbox until a test registers it, so IsDown refuses a create
    on it (422 "Service not found or not a custom service you own") while API's goes through."""
    return ServiceFactory(team=team, name="Dashboard", isdown_service_id=1002)


def _final(*publications: Publication, timeout: float = 30.0) -> None:
    def settled():
        for publication in publications:
            publication.refresh_from_db()
        return all(p.is_final for p in publications)

    wait_for(settled, timeout=timeout, what=f"publications {[p.pk for p in publications]} to settle")


def _approve(draft_id: int, reviewer) -> list[Publication]:
    draft = Draft.objects.get(pk=draft_id)
    revision = workflow.latest_revision(draft)
    assert revision is not None
    return workflow.approve(
        draft_id=draft_id, revision_id=revision.pk, reviewer=reviewer, sha256=revision.sha256
    ).publications


def _page(user, incident: Incident) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(reverse("incidents:incident_detail", args=[incident.pk]))
    assert response.status_code == 200
    return response.content.decode()


def _summary(html: str, service: str) -> str:
    """The publishing summary the services table shows for ``service``'s row."""
    row = html.split(f'data-service="{service}"', 1)[1].split("</tr>", 1)[0]
    return row.split('data-summary="', 1)[1].split('"', 1)[0]


def test_one_service_fails_the_other_publishes_and_the_failed_one_recovers_alone(
    start_worker, service, dashboard, author, approver_user
):
    start_worker()
    revision = workflow.create_and_submit(
        user=author, service=service, kind=DraftKind.OPEN, fields=FIELDS, also_services=[dashboard]
    )
    assert revision.requests.count() == 2
    api_pub, dashboard_pub = _approve(revision.draft_id, approver_user)
    _final(api_pub, dashboard_pub)

    # Partial failure: API is on IsDown, grouped; Dashboard was refused and has no incident.
    assert (api_pub.state, dashboard_pub.state) == (S.PUBLISHED, S.FAILED)
    assert "Service not found" in dashboard_pub.last_error
    draft = Draft.objects.get(pk=revision.draft_id)
    assert draft.state == DraftState.FAILED and draft.group is not None
    api_incident = Incident.objects.get(pk=api_pub.incident_id)
    assert api_incident.group == draft.group and api_incident.service == service
    published = AuditEvent.objects.get(action="publication.published", target_id=str(api_pub.pk))
    assert published.changes["group"] == [None, draft.group.pk]
    assert not Incident.objects.filter(service=dashboard).exists()
    assert SandboxIncident.objects.count() == 1
    html = _page(author, api_incident)
    assert (_summary(html, "API"), _summary(html, "Dashboard")) == ("published", "failed")
    assert reverse("incidents:publication_edit_and_resubmit", args=[dashboard_pub.pk]) in html

    # Recovery of Dashboard alone: the IsDown side is fixed, the draft is edited and resubmitted; the new revision
    # sends only to Dashboard (API is never sent twice), is reviewed again, and joins the group.
    register_service(1002, "Dashboard")
    publishing.edit_and_resubmit(publication_id=dashboard_pub.pk, user=author)
    resubmitted = workflow.submit(draft_id=draft.pk, user=author)
    assert [(r.service.name, r.method) for r in resubmitted.requests.all()] == [("Dashboard", "POST")]
    [retried] = _approve(draft.pk, approver_user)
    _final(retried)
    assert retried.state == S.PUBLISHED
    dashboard_incident = Incident.objects.get(pk=retried.incident_id)
    assert dashboard_incident.group == draft.group and dashboard_incident.service == dashboard
    assert Draft.objects.get(pk=draft.pk).state == DraftState.PUBLISHED
    assert [json.loads(r.body)["service_id"] for r in sandbox_requests("POST")] == [1001, 1002, 1002]
    assert SandboxIncident.objects.count() == 2
    html = _page(author, api_incident)
    assert (_summary(html, "API"), _summary(html, "Dashboard")) == ("published", "published")
    assert AuditEvent.objects.filter(action="publication.superseded", target_id=str(dashboard_pub.pk)).exists()

    # Updates and the resolve fan out to both services, each IsDown incident in approval order: both drafts are
    # approved before the worker has sent the first.
    identified = workflow.create_and_submit(
        user=author,
        service=service,
        kind=DraftKind.UPDATE,
        incident=dashboard_incident,
        fields={**FIELDS, "description": "A bad deploy; rolling back.", "stage": Stage.IDENTIFIED},
    )
    resolved = workflow.create_and_submit(
        user=author,
        service=service,
        kind=DraftKind.UPDATE,
        incident=api_incident,
        fields={**FIELDS, "description": "Resolved.", "stage": Stage.RESOLVED},
    )
    updates = [*_approve(identified.draft_id, approver_user), *_approve(resolved.draft_id, approver_user)]
    assert sorted(p.target_remote_id for p in updates) == sorted(
        [api_incident.remote_id, dashboard_incident.remote_id] * 2
    )
    _final(*updates)
    assert {p.state for p in updates} == {S.PUBLISHED}
    for incident in (api_incident, dashboard_incident):
        incident.refresh_from_db()
        assert incident.resolved
        assert list(incident.updates.values_list("stage", flat=True)) == ["investigating", "identified", "resolved"]
        patches = [r for r in sandbox_requests("PATCH") if r.path.endswith(f"/{incident.remote_id}")]
        assert [json.loads(r.body)["resolution_stage"] for r in patches] == ["identified", "resolved"]


def test_adding_and_removing_a_service_are_reviewed_and_published_by_the_worker(
    start_worker, service, dashboard, author, approver_user
):
    register_service(1002, "Dashboard")
    status = ServiceFactory(team=service.team, name="Status API", isdown_service_id=1003)
    register_service(1003, "Status API")
    start_worker()
    revision = workflow.create_and_submit(
        user=author, service=service, kind=DraftKind.OPEN, fields=FIELDS, also_services=[dashboard]
    )
    opened = _approve(revision.draft_id, approver_user)
    _final(*opened)
    api_incident, dashboard_incident = (Incident.objects.get(pk=p.incident_id) for p in opened)
    group = api_incident.group
    assert group is not None and dashboard_incident.group == group

    # Add Status API: a reviewed create on it, with the incident's words; it joins the group.
    added = workflow.create_and_submit(
        user=author,
        service=status,
        kind=DraftKind.ADD_SERVICE,
        incident=api_incident,
        fields={**FIELDS, "description": "The status API is affected too."},
    )
    [create] = _approve(added.draft_id, approver_user)
    _final(create)
    assert create.state == S.PUBLISHED
    status_incident = Incident.objects.get(pk=create.incident_id)
    assert (status_incident.service, status_incident.group) == (status, group)

    # Remove Dashboard: a reviewed resolve of its IsDown incident only; the others stay open.
    removed = workflow.create_and_submit(
        user=author,
        service=dashboard,
        kind=DraftKind.REMOVE_SERVICE,
        incident=dashboard_incident,
        fields={**FIELDS, "description": "The dashboard is fine again.", "stage": Stage.RESOLVED},
    )
    [resolve] = _approve(removed.draft_id, approver_user)
    _final(resolve)
    assert resolve.state == S.PUBLISHED
    for incident, resolved in ((api_incident, False), (dashboard_incident, True), (status_incident, False)):
        incident.refresh_from_db()
        assert incident.resolved is resolved
    assert [r.path for r in sandbox_requests("PATCH")] == [f"/sandbox/api/v2/incidents/{dashboard_incident.remote_id}"]

    # The next update goes to the two open services only.
    update = workflow.create_and_submit(
        user=author,
        service=service,
        kind=DraftKind.UPDATE,
        incident=api_incident,
        fields={**FIELDS, "description": "Monitoring.", "stage": Stage.MONITORING},
    )
    assert sorted(r.target_remote_id for r in update.requests.all()) == sorted(
        [api_incident.remote_id, status_incident.remote_id]
    )
