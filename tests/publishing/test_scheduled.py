"""Scheduled publication (issue 12 §7): an approval may name a later time; the publication waits as ``scheduled``,
an approver may cancel it until it is sent, and then it goes out like any other, in its place among the
incident's changes by its time (order by (due time, id)). One test runs a real worker against the sandbox."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from incidents import access, enqueue, publishing, workflow
from incidents.models import AuditEvent, DraftKind, DraftState, Publication, PublicationState
from tests.factories import IncidentFactory
from tests.waiting import wait_for

from .conftest import sandbox_requests

S = PublicationState
FIELDS = {"title": "API errors", "severity": "major", "description": "Cause identified.", "stage": "identified"}


def approved(*, user, reviewer, service, incident=None, publish_at=None, description="Cause identified."):
    """A draft written by ``user`` and approved by ``reviewer`` through the workflow; its one publication."""
    kind = DraftKind.UPDATE if incident is not None else DraftKind.OPEN
    draft = workflow.create(
        user=user, service=service, kind=kind, incident=incident, fields={**FIELDS, "description": description}
    )
    revision = workflow.submit(draft_id=draft.pk, user=user)
    decision = workflow.approve(
        draft_id=draft.pk, revision_id=revision.pk, reviewer=reviewer, sha256=revision.sha256, publish_at=publish_at
    )
    return decision.publications[0]


@pytest.fixture
def incident(api_service):
    return IncidentFactory(service=api_service, remote_id="4242", title="API errors", severity="major")


# --- Ordering (no worker) -----------------------------------------------------------------------------------------
def test_an_approval_with_a_time_waits_scheduled_and_is_not_enqueued(
    responder, approver, api_service, incident, no_broker
):
    later = timezone.now() + timedelta(hours=1)
    publication = approved(user=responder, reviewer=approver, service=api_service, incident=incident, publish_at=later)
    assert publication.state == S.SCHEDULED
    assert publication.due_at == later and publication.next_attempt_at == later
    assert publication.draft.state == DraftState.APPROVED
    assert ("publish", publication.pk) not in no_broker.sent
    assert publishing.process(publication_id=publication.pk).state == S.SCHEDULED  # early message: nothing happens
    assert not publication.attempt_rows.exists()
    assert publication.pk not in [pk for pk, _ in publishing.sweep()]
    [approval] = AuditEvent.objects.filter(action="review.approved")
    assert approval.changes["publish_at"] == [None, later.isoformat()]


def test_a_change_approved_later_but_due_earlier_goes_first(responder, approver, api_service, incident):
    scheduled = approved(
        user=responder,
        reviewer=approver,
        service=api_service,
        incident=incident,
        publish_at=timezone.now() + timedelta(hours=1),
        description="Maintenance at 08:00.",
    )
    immediate = approved(user=responder, reviewer=approver, service=api_service, incident=incident)
    assert immediate.pk > scheduled.pk
    assert publishing.ahead_of(immediate) is None  # not held by the one due later
    assert publishing.ahead_of(scheduled) == immediate
    assert publishing.next_in_line("4242") == immediate.pk
    assert [p.pk for p in publishing.incident_queue("4242")] == [immediate.pk, scheduled.pk]


def test_a_scheduled_change_holds_the_changes_due_after_it(responder, approver, api_service, incident):
    scheduled = approved(
        user=responder,
        reviewer=approver,
        service=api_service,
        incident=incident,
        publish_at=timezone.now() + timedelta(minutes=5),
    )
    later = approved(user=responder, reviewer=approver, service=api_service, incident=incident)
    # Its time has come (the sweeper has not queued it yet): it is now ahead of a change approved after that time.
    Publication.objects.filter(pk=scheduled.pk).update(
        due_at=timezone.now() - timedelta(minutes=1), next_attempt_at=timezone.now() - timedelta(minutes=1)
    )
    Publication.objects.filter(pk=later.pk).update(due_at=timezone.now())
    later.refresh_from_db()
    assert publishing.ahead_of(later).pk == scheduled.pk
    due = [pk for pk, _ in publishing.sweep()]
    assert scheduled.pk in due and later.pk not in due  # the later one is blocked until the scheduled one settles


def test_when_due_it_waits_scheduled_for_its_turn_then_is_queued_and_sent(
    responder, approver, api_service, incident, no_broker
):
    publication = approved(
        user=responder,
        reviewer=approver,
        service=api_service,
        incident=incident,
        publish_at=timezone.now() + timedelta(minutes=5),
    )
    Publication.objects.filter(pk=publication.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    blocker = approved(user=responder, reviewer=approver, service=api_service, incident=incident)
    Publication.objects.filter(pk=blocker.pk).update(
        state=S.FAILED, due_at=timezone.now() - timedelta(hours=1), last_error="held"
    )
    step = publishing.process(publication_id=publication.pk)
    # Due, but a change due before it is held: it stays scheduled (and cancellable) until its turn.
    assert step.state == S.SCHEDULED and step.waiting_for == blocker.pk
    assert publication.pk not in [pk for pk, _ in publishing.sweep()]  # blocked: the sweeper leaves it alone
    Publication.objects.filter(pk=blocker.pk).update(state=S.ABANDONED)

    class Refuses:
        """Stands in for IsDown here: the claim is what is looked at (the worker test sends for real)."""

        def send(self, request):
            raise publishing.isdown.NotSent("not sent in this test", latency_ms=0)

        def close(self):
            pass

    publishing.process(publication_id=publication.pk, client=Refuses())
    publication.refresh_from_db()
    assert publication.state == S.RETRY_WAIT and publication.attempts == 1
    actions = list(
        AuditEvent.objects.filter(target_id=str(publication.pk), action__startswith="publication.")
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert actions == ["publication.due", "publication.sending", "publication.retry_scheduled"]


def test_an_approver_cancels_a_scheduled_change_until_it_is_sent(
    responder, approver, approver2, api_service, incident, no_broker
):
    scheduled = approved(
        user=responder,
        reviewer=approver,
        service=api_service,
        incident=incident,
        publish_at=timezone.now() + timedelta(hours=1),
    )
    with pytest.raises(access.RoleRequired):
        publishing.cancel_scheduled(publication_id=scheduled.pk, user=responder)
    publishing.cancel_scheduled(publication_id=scheduled.pk, user=approver2)
    scheduled.refresh_from_db()
    assert scheduled.state == S.ABANDONED and "Cancelled by approver2" in scheduled.decision_note
    assert scheduled.draft.state == DraftState.ABANDONED
    [event] = AuditEvent.objects.filter(action="publication.cancelled")
    assert event.actor_label == "approver2"
    with pytest.raises(publishing.InvalidTransition):
        publishing.cancel_scheduled(publication_id=scheduled.pk, user=approver2)


def test_a_change_approved_to_go_at_once_cannot_be_cancelled(responder, approver, api_service, incident):
    immediate = approved(user=responder, reviewer=approver, service=api_service, incident=incident)
    assert immediate.state == S.QUEUED
    with pytest.raises(publishing.InvalidTransition):
        publishing.cancel_scheduled(publication_id=immediate.pk, user=approver)


def test_cancelling_hands_the_queue_to_the_next_change(
    responder, approver, api_service, incident, no_broker, django_capture_on_commit_callbacks
):
    scheduled = approved(
        user=responder,
        reviewer=approver,
        service=api_service,
        incident=incident,
        publish_at=timezone.now() + timedelta(minutes=5),
    )
    behind = approved(user=responder, reviewer=approver, service=api_service, incident=incident)
    # Its time came; a change due after it waits behind it.
    Publication.objects.filter(pk=behind.pk).update(due_at=scheduled.due_at + timedelta(minutes=1))
    behind.refresh_from_db()
    assert publishing.ahead_of(behind).pk == scheduled.pk
    no_broker.sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        publishing.cancel_scheduled(publication_id=scheduled.pk, user=approver)
    assert ("publish", behind.pk) in no_broker.sent


@pytest.mark.parametrize("decision", ["past", "reject"])
def test_only_an_approval_for_a_time_to_come_is_scheduled(responder, approver, api_service, incident, decision):
    draft = workflow.create(
        user=responder, service=api_service, kind=DraftKind.UPDATE, incident=incident, fields=FIELDS
    )
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    with pytest.raises(workflow.NotAllowed):
        workflow.decide(
            draft_id=draft.pk,
            revision_id=revision.pk,
            reviewer=approver,
            decision="approve" if decision == "past" else "reject",
            comment="no",
            sha256=revision.sha256,
            publish_at=timezone.now() + (timedelta(minutes=-1) if decision == "past" else timedelta(hours=1)),
        )
    assert not Publication.objects.exists()


# --- The pages --------------------------------------------------------------------------------------------------------
def test_the_review_page_schedules_and_shows_the_resulting_order(
    as_user, responder, approver, api_service, incident, no_broker
):
    first = approved(
        user=responder,
        reviewer=approver,
        service=api_service,
        incident=incident,
        publish_at=timezone.now() + timedelta(hours=2),
        description="Maintenance tonight.",
    )
    draft = workflow.create(
        user=responder, service=api_service, kind=DraftKind.UPDATE, incident=incident, fields=FIELDS
    )
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    client = as_user(approver)
    page = client.get(f"/drafts/{draft.pk}/review/").content.decode()
    assert 'name="publish_at"' in page and f"Publication #{first.pk}" in page
    when = (timezone.localtime() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    response = client.post(
        f"/drafts/{draft.pk}/review/",
        {"decision": "approve", "revision": revision.pk, "sha256": revision.sha256, "publish_at": when},
    )
    assert response.status_code == 302
    mine = Publication.objects.get(draft=draft)
    assert mine.state == S.SCHEDULED
    page = client.get(f"/drafts/{draft.pk}/review/").content.decode()
    # Due in one hour, approved after the one due in two: it comes first.
    assert page.index(f"Publication #{mine.pk}") < page.index(f"Publication #{first.pk}")
    assert "(this change)" in page
    status = client.get(f"/publications/{mine.pk}/").content.decode()
    assert "Scheduled for" in status and "Cancel the scheduled publication" in status
    assert client.post(f"/publications/{mine.pk}/cancel/", {"state": "scheduled"}).status_code == 302
    mine.refresh_from_db()
    assert mine.state == S.ABANDONED


def test_a_time_in_the_past_is_refused_by_the_form(as_user, responder, approver, api_service, incident):
    draft = workflow.create(
        user=responder, service=api_service, kind=DraftKind.UPDATE, incident=incident, fields=FIELDS
    )
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    response = as_user(approver).post(
        f"/drafts/{draft.pk}/review/",
        {"decision": "approve", "revision": revision.pk, "sha256": revision.sha256, "publish_at": "2001-01-01T10:00"},
    )
    assert response.status_code == 422 and b"a time still to come" in response.content
    assert not Publication.objects.exists()


# --- A real worker --------------------------------------------------------------------------------------------------
@pytest.mark.worker
def test_a_scheduled_publication_goes_out_when_due_through_the_sweeper(start_worker, author, approver_user, service):
    start_worker()
    due = timezone.now() + timedelta(seconds=3)
    publication = approved(user=author, reviewer=approver_user, service=service, publish_at=due)
    assert publication.state == S.SCHEDULED
    assert publication.pk not in [pk for pk, _ in publishing.sweep()]
    assert not sandbox_requests("POST")

    def sweeper_enqueued():
        """What the beat's sweep task does: enqueue what is due."""
        ids = []
        for publication_id, countdown in publishing.sweep():
            enqueue.publication(publication_id, countdown=countdown or None)
            ids.append(publication_id)
        return publication.pk in ids

    wait_for(sweeper_enqueued, timeout=15, what="the sweeper to enqueue the scheduled publication")

    def published():
        publication.refresh_from_db()
        return publication.state == S.PUBLISHED

    wait_for(published, timeout=30, what="the scheduled publication to be published")
    assert publication.published_at >= due
    assert len(sandbox_requests("POST")) == 1
    publication.draft.refresh_from_db()
    assert publication.draft.state == DraftState.PUBLISHED
    actions = list(
        AuditEvent.objects.filter(target_id=str(publication.pk), action__startswith="publication.")
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert actions[:3] == ["publication.due", "publication.sending", "publication.published"]
