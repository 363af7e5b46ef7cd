"""Where issue 12's features meet (found in review after the merge): drafts from alerts and the review's email,
the order the held-publication email counts in, break-glass and scheduling on a grouped incident, reminders of a
grouped incident, templates and the lint on add/remove-service drafts. Each test failed before its fix."""

from __future__ import annotations

from datetime import timedelta

import pytest
import respx
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from incidents import alerts, draft_templates, publishing, reminders, selectors, workflow
from incidents.models import (
    AuditEvent,
    DraftKind,
    DraftTemplate,
    Incident,
    IncidentGroup,
    IncidentUpdate,
    Notification,
    Publication,
    PublicationState,
    UpdateReminder,
)

from .factories import IncidentFactory, ServiceFactory
from .test_break_glass import code_at, enrolled

pytestmark = pytest.mark.django_db

FIELDS = {"title": "API errors", "severity": "major", "description": "Elevated 5xx on /v1.", "stage": "investigating"}


def alert_draft(team, approver, service):
    """A draft written by the team's alert webhook (its system author), never submitted."""
    alerts.rotate_token(team=team, user=approver)
    alerts.add_route(team=team, user=approver, label_name="service", label_value="api", service=service)
    alert = alerts.Alert(
        source="uptime-checker",
        status="firing",
        fingerprint="api-down-1",
        key="api-down-1",
        labels={"service": "api"},
        title="API is down",
        description="Every check fails.",
    )
    [outcome] = alerts.receive(team=team, alerts=[alert])
    return workflow.Draft.objects.get(pk=outcome["draft"])


# --- 1. The review of an alert's draft is told to whoever submitted it ----------------------------------------------
@pytest.mark.parametrize("decision", ["approve", "request_changes", "reject"])
def test_the_review_of_an_alert_draft_is_emailed_to_its_submitter(
    platform, api_service, responder, approver, no_broker, decision
):
    draft = alert_draft(platform, approver, api_service)
    assert not draft.author.is_active and not draft.author.email  # the system author: nobody reads its mail
    revision = workflow.submit(draft_id=draft.pk, user=responder)  # submitted unedited: the responder adopted it
    workflow.decide(
        draft_id=draft.pk,
        revision_id=revision.pk,
        reviewer=approver,
        decision=decision,
        comment="" if decision == "approve" else "Say which region.",
        sha256=revision.sha256,
    )
    told = Notification.objects.get(kind="reviewed")
    assert told.recipients == [responder.email]
    assert f"draft #{draft.pk}" in told.body


# --- 2. "N later changes wait behind it" counts in the order they go out -------------------------------------------
def approved_update(*, author, reviewer, incident, description: str, publish_at=None):
    fields = {**FIELDS, "title": incident.title, "severity": incident.severity, "description": description}
    revision = workflow.create_and_submit(
        user=author, service=incident.service, kind=DraftKind.UPDATE, fields=fields, incident=incident
    )
    decision = workflow.approve(
        draft_id=revision.draft_id,
        revision_id=revision.pk,
        reviewer=reviewer,
        sha256=revision.sha256,
        publish_at=publish_at,
    )
    return decision.publications


def test_the_email_about_a_held_publication_counts_what_waits_behind_it_in_due_order(
    settings, api_service, responder, approver
):
    settings.ISDOWN_API_URL = "http://isdown.test"
    incident = IncidentFactory(service=api_service, remote_id="4242", title="API errors", severity="major")
    # Approved first but scheduled for later: it goes out after the two below, so it waits behind the first.
    later = approved_update(
        author=responder,
        reviewer=approver,
        incident=incident,
        description="Maintenance at 08:00.",
        publish_at=timezone.now() + timedelta(hours=1),
    )
    [first] = approved_update(author=responder, reviewer=approver, incident=incident, description="Identified.")
    approved_update(author=responder, reviewer=approver, incident=incident, description="A fix is rolling out.")
    assert later[0].pk < first.pk and publishing.ahead_of(first) is None
    with respx.mock(base_url="http://isdown.test") as isdown_api:
        isdown_api.patch("/api/v2/incidents/4242").respond(
            422, json={"errors": [{"status": 422, "detail": "Status must be 'minor' or 'major'"}]}
        )
        publishing.process(publication_id=first.pk)
    first.refresh_from_db()
    assert first.state == PublicationState.FAILED
    told = Notification.objects.get(kind="publication_failed")
    assert "2 later change(s) to the same incident wait behind it" in told.body


# --- 3. Break-glass and scheduling on a grouped incident fan out -----------------------------------------------------
@pytest.fixture
def grouped(api_service, dashboard_service, platform):
    """A published incident on API and Dashboard, grouped."""
    group = IncidentGroup.objects.create(team=platform, title="API errors")
    api = IncidentFactory(service=api_service, remote_id="5001", title="API errors", severity="major", group=group)
    dashboard = IncidentFactory(
        service=dashboard_service, remote_id="5002", title="API errors", severity="major", group=group
    )
    return group, api, dashboard


@pytest.fixture
def status_service(platform):
    return ServiceFactory(team=platform, name="Status API", isdown_service_id=1003)


def grouped_update(author, incident, description="Cause identified: a bad deploy, rolled back."):
    fields = {**FIELDS, "description": description, "stage": "identified"}
    return workflow.create_and_submit(
        user=author, service=incident.service, kind=DraftKind.UPDATE, fields=fields, incident=incident
    )


def test_break_glass_on_a_grouped_incident_publishes_to_every_open_service_and_says_so(
    grouped, approver, approver2, no_broker, django_capture_on_commit_callbacks
):
    _, api, _dashboard = grouped
    revision = grouped_update(approver, api)
    now = timezone.now()
    enrolled(approver, now - timedelta(minutes=5))
    with django_capture_on_commit_callbacks(execute=True):
        decision = workflow.break_glass(
            draft_id=revision.draft_id,
            revision_id=revision.pk,
            user=approver,
            sha256=revision.sha256,
            reason="Nobody else answers.",
            totp_code=code_at(now),
            now=now,
        )
    assert [(p.target_remote_id, p.state) for p in decision.publications] == [
        ("5001", PublicationState.QUEUED),
        ("5002", PublicationState.QUEUED),
    ]
    assert {pk for name, pk in no_broker.sent if name == "publish"} == {p.pk for p in decision.publications}
    for publication in decision.publications:
        assert publishing.integrity_problem(publication) is None  # the worker sends both
    email = Notification.objects.get(kind="break_glass")
    assert email.recipients == [approver2.email]
    # Every other approver learns where it went: both services, not only the draft's first.
    assert "API, Dashboard" in email.subject and "API, Dashboard" in email.body


def test_a_scheduled_update_of_a_grouped_incident_schedules_every_service(grouped, responder, approver, no_broker):
    _, _api, dashboard = grouped
    revision = grouped_update(responder, dashboard)
    at = timezone.now() + timedelta(hours=2)
    decision = workflow.approve(
        draft_id=revision.draft_id, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256, publish_at=at
    )
    assert [(p.target_remote_id, p.state, p.due_at) for p in decision.publications] == [
        ("5001", PublicationState.SCHEDULED, at),
        ("5002", PublicationState.SCHEDULED, at),
    ]
    assert not [pk for name, pk in no_broker.sent if name == "publish"]


def test_the_review_of_a_grouped_update_shows_the_order_on_every_incident_it_goes_to(
    grouped, responder, approver, approver2, as_user
):
    _, api, _dashboard = grouped
    first = grouped_update(responder, api, description="Maintenance at 08:00.")
    at = timezone.now() + timedelta(hours=2)
    scheduled = workflow.approve(
        draft_id=first.draft_id, revision_id=first.pk, reviewer=approver, sha256=first.sha256, publish_at=at
    ).publications
    # The next change is drafted from the API incident's page: it goes to Dashboard's incident too.
    second = grouped_update(responder, api)
    page = as_user(approver2).get(reverse("incidents:draft_review", kwargs={"pk": second.draft_id})).content.decode()
    for publication in scheduled:
        assert f"Publication #{publication.pk} of draft #{first.draft_id}" in page
    assert 'id="order-5001"' in page and 'id="order-5002"' in page


def test_the_review_of_a_removal_shows_the_order_on_its_incident(grouped, responder, approver, approver2, as_user):
    _, api, dashboard = grouped
    first = grouped_update(responder, api, description="Maintenance at 08:00.")
    at = timezone.now() + timedelta(hours=2)
    workflow.approve(
        draft_id=first.draft_id, revision_id=first.pk, reviewer=approver, sha256=first.sha256, publish_at=at
    )
    removal = workflow.create_and_submit(
        user=responder,
        service=dashboard.service,
        kind=DraftKind.REMOVE_SERVICE,
        incident=dashboard,
        fields={**FIELDS, "stage": "resolved", "description": "Dashboard is no longer affected."},
    )
    page = as_user(approver2).get(reverse("incidents:draft_review", kwargs={"pk": removal.draft_id})).content.decode()
    assert 'id="order-5002"' in page and 'id="order-5001"' not in page
    assert f"of draft #{first.draft_id}" in page


def test_cancelling_one_service_of_a_scheduled_grouped_update_leaves_the_others_and_the_page_says_so(
    grouped, responder, approver, as_user, no_broker
):
    """Decided: a cancel is per publication (per service), like retry and abandon; the page says which service a
    cancel button stops and that the draft's other scheduled publications stay scheduled."""
    _, api, _dashboard = grouped
    revision = grouped_update(responder, api, description="Maintenance at 08:00.")
    at = timezone.now() + timedelta(hours=2)
    api_pub, dashboard_pub = workflow.approve(
        draft_id=revision.draft_id, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256, publish_at=at
    ).publications
    client = as_user(approver)
    draft_url = reverse("incidents:draft_detail", kwargs={"pk": revision.draft_id})
    page = client.get(draft_url).content.decode()
    assert "Cancel the scheduled publication to API" in page
    assert "Cancel the scheduled publication to Dashboard" in page
    assert page.count("only this service") == 2
    response = client.post(
        reverse("incidents:publication_cancel", kwargs={"pk": api_pub.pk}), {"state": "scheduled", "next": draft_url}
    )
    assert response.status_code == 302
    api_pub.refresh_from_db()
    dashboard_pub.refresh_from_db()
    assert (api_pub.state, dashboard_pub.state) == (PublicationState.ABANDONED, PublicationState.SCHEDULED)
    draft = workflow.Draft.objects.get(pk=revision.draft_id)
    assert draft.state == "approved"  # still waiting for its time on Dashboard
    page = client.get(draft_url).content.decode()
    assert "Cancel the scheduled publication to API" not in page
    assert "Cancel the scheduled publication to Dashboard" in page


def test_the_draft_and_incident_pages_offer_the_cancel_of_a_scheduled_publication_at_once(
    api_service, responder, approver, as_user
):
    """The README promises the cancel on the draft's page; the blocks there (and on the incident page) were rendered
    without it, so the button only appeared after the first poll (and never without JavaScript)."""
    incident = IncidentFactory(service=api_service, remote_id="4242", title="API errors", severity="major")
    [scheduled] = approved_update(
        author=responder,
        reviewer=approver,
        incident=incident,
        description="Maintenance at 08:00.",
        publish_at=timezone.now() + timedelta(hours=1),
    )
    client = as_user(approver)
    for url in (
        reverse("incidents:draft_detail", kwargs={"pk": scheduled.draft_id}),
        reverse("incidents:incident_detail", kwargs={"pk": incident.pk}),
    ):
        page = client.get(url).content.decode()
        assert reverse("incidents:publication_cancel", kwargs={"pk": scheduled.pk}) in page, url
        assert f'id="cancel-scope-{scheduled.pk}"' not in page  # one service: nothing else stays scheduled
    assert reverse("incidents:publication_cancel", kwargs={"pk": scheduled.pk}) not in (
        as_user(responder).get(reverse("incidents:draft_detail", kwargs={"pk": scheduled.draft_id})).content.decode()
    )


# --- 4. Reminders of a grouped incident: one clock, one email ------------------------------------------------------
def test_an_overdue_grouped_incident_is_emailed_once_not_once_per_service(grouped, responder, approver, no_broker):
    group, api, dashboard = grouped
    revision = grouped_update(responder, api)
    workflow.approve(draft_id=revision.draft_id, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256)
    api.refresh_from_db()
    dashboard.refresh_from_db()
    assert api.next_update_due_at == dashboard.next_update_due_at  # one approval restarts every service's clock
    due = api.next_update_due_at
    assert reminders.run(now=due + timedelta(seconds=1))["overdue_updates"] == 1
    [email] = Notification.objects.filter(kind="update_overdue")
    assert "API, Dashboard" in email.subject
    assert sorted(email.recipients) == sorted([approver.email, responder.email])
    assert UpdateReminder.objects.filter(incident__group=group).count() == 2  # each told, once per due time
    [event] = AuditEvent.objects.filter(action="incident.update_overdue")
    assert "API, Dashboard" in event.summary
    assert reminders.run(now=due + timedelta(minutes=5))["overdue_updates"] == 0
    assert Notification.objects.filter(kind="update_overdue").count() == 1


def test_moving_the_next_update_of_a_grouped_incident_moves_every_open_service(grouped, responder, no_broker):
    _group, api, dashboard = grouped
    now = timezone.now()
    for member in (api, dashboard):
        member.next_update_due_at = now - timedelta(minutes=1)
        member.save(update_fields=["next_update_due_at"])
    reminders.set_next_update_due(incident_id=api.pk, user=responder, minutes=45, now=now)
    dashboard.refresh_from_db()
    assert dashboard.next_update_due_at == now + timedelta(minutes=45)
    assert reminders.run(now=now + timedelta(minutes=1))["overdue_updates"] == 0
    assert not Notification.objects.filter(kind="update_overdue").exists()
    [event] = AuditEvent.objects.filter(action="incident.next_update_due_set")
    assert "API, Dashboard" in event.summary


def test_a_failed_publication_of_an_alert_draft_is_emailed_to_its_submitter(
    settings, platform, api_service, responder, approver
):
    settings.ISDOWN_API_URL = "http://isdown.test"
    draft = alert_draft(platform, approver, api_service)
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    [publication] = workflow.approve(
        draft_id=draft.pk, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256
    ).publications
    with respx.mock(base_url="http://isdown.test") as isdown_api:
        isdown_api.post("/api/v2/incidents").respond(422, json={"errors": [{"status": 422, "detail": "Bad title"}]})
        publishing.process(publication_id=publication.pk)
    told = Notification.objects.get(kind="publication_failed")
    assert responder.email in told.recipients


# --- 5. Corrections, templates and the lint on a grouped incident's drafts -----------------------------------------
def test_a_correction_of_a_grouped_incident_fans_out_like_any_update(grouped, responder):
    _, api, dashboard = grouped
    for member in (api, dashboard):
        IncidentUpdate.objects.create(
            incident=member,
            position=0,
            stage="investigating",
            description="We are lookng.",
            remote_created_at=timezone.now(),
        )
    revision = workflow.create_and_submit(
        user=responder,
        service=api.service,
        kind=DraftKind.UPDATE,
        incident=api,
        fields={**FIELDS, "description": "Correction: We are looking.", "stage": "investigating"},
        corrects_position=0,
    )
    assert [r.target_remote_id for r in revision.requests.order_by("position")] == ["5001", "5002"]
    assert revision.draft.corrects_position == 0


def picker_options(page: str) -> str:
    start = page.index('id="id_template"')
    return page[start : page.index("</select>", start)]


def test_the_template_picker_keeps_an_add_or_remove_page_what_it_is(
    grouped, responder, platform, status_service, as_user
):
    """Picking a template reloads the page with ?template=: the add-a-service and remove-a-service pages must stay
    themselves (they became a plain update of every service), and offer the templates that fit: a new incident's for
    an added service (a create on it), a resolve's for a removed one."""
    _, api, dashboard = grouped
    opening = DraftTemplate.objects.create(
        team=platform, kind="open", name="Outage", title="{services} unavailable", description="{services} is down."
    )
    resolving = DraftTemplate.objects.create(
        team=platform, kind="resolve", name="Fixed", description="{services} works again since {now}."
    )
    DraftTemplate.objects.create(team=platform, kind="update", name="Identified", stage="identified", description="x")
    client = as_user(responder)
    add_url = reverse("incidents:update_new", kwargs={"pk": api.pk})
    page = client.get(f"{add_url}?add={status_service.pk}").content.decode()
    assert f'<input type="hidden" name="add" value="{status_service.pk}">' in page
    assert "Outage" in picker_options(page) and "Fixed" not in picker_options(page)
    page = client.get(f"{add_url}?add={status_service.pk}&template={opening.pk}").content.decode()
    assert 'id="fanout-targets"' in page and f"{status_service.name} gets an IsDown incident" in page
    assert "Status API is down." in page  # {services}: the added service

    remove_url = reverse("incidents:update_new", kwargs={"pk": dashboard.pk})
    page = client.get(f"{remove_url}?remove=1").content.decode()
    assert '<input type="hidden" name="remove" value="1">' in page
    assert "Fixed" in picker_options(page) and "Outage" not in picker_options(page)
    page = client.get(f"{remove_url}?remove=1&template={resolving.pk}").content.decode()
    assert "Resolves Dashboard's IsDown incident #5002" in page
    assert "Dashboard works again since" in page  # {services}: the removed service only


def test_an_update_template_on_a_grouped_incident_names_every_service_it_goes_to(grouped, responder, platform, as_user):
    _, _api, dashboard = grouped
    template = DraftTemplate.objects.create(
        team=platform, kind="update", name="Identified", stage="identified", description="{services}: cause found."
    )
    page = (
        as_user(responder)
        .get(reverse("incidents:update_new", kwargs={"pk": dashboard.pk}) + f"?template={template.pk}")
        .content.decode()
    )
    assert "API, Dashboard: cause found." in page
    resolve = draft_templates.resolve_default(platform, dashboard)
    assert resolve is None  # no resolve template: the usual words
    DraftTemplate.objects.create(team=platform, kind="resolve", name="Fixed", description="{services} work again.")
    assert draft_templates.resolve_default(platform, dashboard)["description"] == "API, Dashboard work again."


def test_the_lint_checks_a_removal_and_an_added_service(grouped, responder, status_service, as_user):
    _, api, dashboard = grouped
    client = as_user(responder)
    url = reverse("incidents:update_new", kwargs={"pk": dashboard.pk}) + "?remove=1"
    response = client.post(
        url,
        {"action": "validate", "title": "API errors", "severity": "major", "stage": "resolved", "description": "test"},
    )
    assert "resolve-text" in response.content.decode()
    url = reverse("incidents:update_new", kwargs={"pk": api.pk}) + f"?add={status_service.pk}"
    response = client.post(
        url,
        {
            "action": "validate",
            "title": "API errors",
            "severity": "major",
            "stage": "identified",
            "description": "db-1.corp is down",
        },
    )
    assert "internal-host" in response.content.decode()


# --- 6. Found by reading ---------------------------------------------------------------------------------------------
def test_whoever_submits_an_alert_draft_follows_it_and_is_not_asked_to_review_it(
    platform, api_service, approver, approver2, as_user
):
    """Submitting an alert's draft adopts it (a co-author: four eyes); the dashboard listed it under the adopter's
    "awaiting my review" (where approving is refused) and not under their own drafts."""
    draft = alert_draft(platform, approver, api_service)
    workflow.submit(draft_id=draft.pk, user=approver)
    assert draft.pk not in [d.pk for d in selectors.awaiting_review(approver)]
    assert draft.pk in [d.pk for d in selectors.awaiting_review(approver2)]
    dashboard = as_user(approver).get(reverse("incidents:dashboard"))
    assert draft.pk in [d.pk for d in dashboard.context["my_drafts"]]
    assert draft.pk not in [d.pk for d in dashboard.context["reviews"]]
    [submitted] = AuditEvent.objects.filter(action="draft.submitted")
    assert submitted.changes["adopted_by"] == [None, "approver"]


def test_a_break_glass_refused_for_a_stale_revision_does_not_spend_the_code(own_bg, approver, no_broker):
    """At 3 a.m. the page was stale (a newer revision is in review): the refusal must not cost the code, or the
    approver waits for the next one on the retry."""
    revision, now = own_bg
    code = code_at(now)
    with pytest.raises(workflow.StaleRevision):
        workflow.break_glass(
            draft_id=revision.draft_id,
            revision_id=revision.pk,
            user=approver,
            sha256="0" * 64,
            reason="Nobody answers.",
            totp_code=code,
            now=now,
        )
    decision = workflow.break_glass(
        draft_id=revision.draft_id,
        revision_id=revision.pk,
        user=approver,
        sha256=revision.sha256,
        reason="Nobody answers.",
        totp_code=code,
        now=now,
    )
    assert decision.review.decision == "break_glass"


@pytest.fixture
def own_bg(approver, api_service):
    draft = workflow.create(user=approver, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    revision = workflow.submit(draft_id=draft.pk, user=approver)
    now = timezone.now()
    enrolled(approver, now - timedelta(minutes=5))
    return revision, now


def test_a_resolved_alert_proposes_the_resolve_of_a_grouped_incident_one_service_of_which_was_removed(
    platform, api_service, dashboard_service, responder, approver, approver2
):
    """The alert's draft was widened to API and Dashboard; Dashboard was then removed from the incident (its IsDown
    incident resolved). The outage is still open on API: the resolved alert proposes its resolve (which fans out to
    every open service)."""
    draft = alert_draft(platform, approver, api_service)
    draft = workflow.save(
        draft_id=draft.pk,
        user=responder,
        expected_version=draft.version,
        fields=workflow.draft_fields(draft),
        also_services=[dashboard_service],
    )
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    decision = workflow.approve(draft_id=draft.pk, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256)
    group = workflow.Draft.objects.get(pk=draft.pk).group
    for n, publication in enumerate(decision.publications):
        incident = IncidentFactory(
            service=publication.service, remote_id=f"800{n}", title=draft.title, group=group, resolved=n == 1
        )
        Publication.objects.filter(pk=publication.pk).update(state=PublicationState.PUBLISHED, incident=incident)
    alert = alerts.Alert(
        source="uptime-checker",
        status="resolved",
        fingerprint="api-down-1",
        key="api-down-1",
        labels={"service": "api"},
    )
    [outcome] = alerts.receive(team=platform, alerts=[alert])
    assert outcome["outcome"] == "draft_created", outcome
    resolve = workflow.Draft.objects.get(pk=outcome["draft"])
    assert resolve.incident.remote_id == "8000" and resolve.stage == "resolved"
    assert resolve.service == api_service
    assert "API, " not in resolve.description  # Dashboard is resolved: only the open service is named


def test_the_resolve_an_alert_proposes_for_a_grouped_incident_names_every_open_service(
    grouped, platform, api_service, approver
):
    _group, api, _dashboard = grouped
    alerts.rotate_token(team=platform, user=approver)
    alerts.add_route(team=platform, user=approver, label_name="service", label_value="api", service=api_service)
    assert (
        "API, Dashboard"
        in alerts._draft_fields(
            alerts.Alert(source="x", status="resolved", fingerprint="f", key="f"), api_service, api
        )["description"]
    )


def test_a_service_is_added_to_an_incident_once_even_when_two_responders_draft_it(
    grouped, responder, approver, approver2, status_service, no_broker
):
    """Two responders click "Add Status API" at 3 a.m.: two drafts. Approving both made two IsDown incidents for
    Status API in one group (and every later update went to both). The second is refused once the first is approved."""
    _, api, dashboard = grouped
    fields = {**FIELDS, "description": "Status API is affected too."}
    first = workflow.create_and_submit(
        user=responder, service=status_service, kind=DraftKind.ADD_SERVICE, fields=fields, incident=api
    )
    second = workflow.create_and_submit(
        user=approver2, service=status_service, kind=DraftKind.ADD_SERVICE, fields=fields, incident=dashboard
    )
    workflow.approve(draft_id=first.draft_id, revision_id=first.pk, reviewer=approver, sha256=first.sha256)
    with pytest.raises(workflow.InvalidTransition, match="Status API is being added to this incident already"):
        workflow.approve(draft_id=second.draft_id, revision_id=second.pk, reviewer=approver, sha256=second.sha256)
    assert Publication.objects.filter(service=status_service).count() == 1
    # Nor can a third be started or submitted while the first is on its way.
    with pytest.raises(workflow.InvalidTransition, match="being added"):
        workflow.create(user=responder, service=status_service, kind=DraftKind.ADD_SERVICE, fields=fields, incident=api)


def test_a_removal_is_not_submitted_once_its_service_is_resolved(grouped, responder):
    _, _api, dashboard = grouped
    draft = workflow.create(
        user=responder,
        service=dashboard.service,
        kind=DraftKind.REMOVE_SERVICE,
        incident=dashboard,
        fields={**FIELDS, "stage": "resolved", "description": "Dashboard is no longer affected."},
    )
    dashboard.resolved = True  # meanwhile the whole incident was resolved
    dashboard.save(update_fields=["resolved"])
    with pytest.raises(workflow.InvalidTransition, match="already resolved"):
        workflow.submit(draft_id=draft.pk, user=responder)


def test_a_service_is_removed_once_even_when_two_responders_draft_it(grouped, responder, approver, approver2):
    _, _api, dashboard = grouped
    fields = {**FIELDS, "stage": "resolved", "description": "Dashboard is no longer affected."}
    first, second = (
        workflow.create_and_submit(
            user=user, service=dashboard.service, kind=DraftKind.REMOVE_SERVICE, fields=fields, incident=dashboard
        )
        for user in (responder, approver2)
    )
    workflow.approve(draft_id=first.draft_id, revision_id=first.pk, reviewer=approver, sha256=first.sha256)
    with pytest.raises(workflow.InvalidTransition, match="being removed from this incident already"):
        workflow.approve(draft_id=second.draft_id, revision_id=second.pk, reviewer=approver, sha256=second.sha256)
    assert Publication.objects.filter(target_remote_id="5002").count() == 1


def test_a_service_added_to_an_incident_joins_the_incidents_clock(grouped, approver, no_broker):
    """A service added later gets its IsDown incident with no due time: it takes the group's, not its own last
    activity plus the interval (which made a second overdue email for the same outage at another time)."""
    _, api, dashboard = grouped
    due = timezone.now() + timedelta(minutes=7)
    api.next_update_due_at = due
    api.save(update_fields=["next_update_due_at"])
    assert dashboard.next_update_due_at is None  # just published by an add-a-service draft
    reminders.run(now=timezone.now())
    dashboard.refresh_from_db()
    assert dashboard.next_update_due_at == due
    assert reminders.run(now=due + timedelta(seconds=1))["overdue_updates"] == 1
    [email] = Notification.objects.filter(kind="update_overdue")
    assert "API, Dashboard" in email.subject


def test_an_add_approved_right_after_another_joins_the_group_the_other_started(
    api_service, dashboard_service, status_service, responder, approver, platform
):
    """Two services added to an incident not grouped yet, approved at the same moment: the second approval read the
    incident before the first committed and started a second group, splitting the incident in two. Simulated: the
    incident is grouped after the second draft was loaded, before its decision is recorded."""
    api = IncidentFactory(service=api_service, remote_id="5001", title="API errors", severity="major")
    fields = {**FIELDS, "description": "Affected too."}
    second = workflow.create_and_submit(
        user=responder, service=status_service, kind=DraftKind.ADD_SERVICE, fields=fields, incident=api
    )
    with transaction.atomic():
        draft = workflow._locked(second.draft_id)  # loaded: the incident has no group yet
        group = IncidentGroup.objects.create(team=platform, title="API errors")  # the first approval commits
        Incident.objects.filter(pk=api.pk).update(group=group)
        workflow._record_decision(
            draft=draft,
            revision=second,
            reviewer=approver,
            decision="approve",
            comment="",
            new_state="approved",
            action="review.approved",
            summary="approved",
        )
    assert workflow.Draft.objects.get(pk=second.draft_id).group == group
    assert Incident.objects.get(pk=api.pk).group == group
    assert IncidentGroup.objects.count() == 1


def test_an_approval_that_waited_for_the_incidents_lock_goes_after_the_one_that_held_it(
    api_service, responder, approver, approver2
):
    """Two approvals of one incident at the same moment: the one that read the clock first but took the incident's
    lock second was due earlier (its clock) with a higher id, so it jumped ahead of the one already committed (and,
    were that one in flight, was claimed beside it). Simulated: its clock is read before the other commits."""
    incident = IncidentFactory(service=api_service, remote_id="4242", title="API errors", severity="major")
    fields = {**FIELDS, "title": incident.title, "severity": incident.severity, "stage": "identified"}
    waiting = workflow.create_and_submit(
        user=responder,
        service=api_service,
        kind=DraftKind.UPDATE,
        fields={**fields, "description": "One."},
        incident=incident,
    )
    early = timezone.now()  # its approval read the clock, then waited for the incident's lock
    [holder] = approved_update(author=responder, reviewer=approver2, incident=incident, description="Two.")
    with transaction.atomic():
        draft = workflow._locked(waiting.draft_id)
        decision = workflow._record_decision(
            draft=draft,
            revision=waiting,
            reviewer=approver,
            decision="approve",
            comment="",
            new_state="approved",
            action="review.approved",
            summary="approved",
            now=early,
        )
    [late] = decision.publications
    assert late.due_at > holder.due_at
    assert publishing.ahead_of(late) == holder and publishing.ahead_of(holder) is None
