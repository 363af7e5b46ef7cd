"""Every transition and every refusal of workflow.py, and the database's own guards."""

from __future__ import annotations

import pytest
from django.core import mail
from django.db import DatabaseError, IntegrityError, connection, transaction

from incidents import access, isdown, notifications, workflow
from incidents.audit import verify_chain
from incidents.models import (
    AuditEvent,
    DraftKind,
    DraftState,
    Notification,
    Publication,
    PublicationState,
    Review,
    Revision,
    RevisionRequest,
)

from .factories import IncidentFactory

pytestmark = pytest.mark.django_db

FIELDS = {"title": "API errors", "severity": "major", "description": "Elevated 5xx on /v1.", "stage": "investigating"}


@pytest.fixture
def draft(responder, api_service):
    return workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)


@pytest.fixture
def submitted(draft, responder):
    return workflow.submit(draft_id=draft.pk, user=responder)


def last_event() -> AuditEvent:
    return AuditEvent.objects.order_by("-seq").first()


def approve(revision: Revision, reviewer, **kwargs) -> workflow.Decision:
    """Approve ``revision`` as a reviewer who saw its hash."""
    return workflow.approve(
        draft_id=revision.draft_id, revision_id=revision.pk, reviewer=reviewer, sha256=revision.sha256, **kwargs
    )


def test_create_starts_a_draft_and_audits_its_fields(draft, responder):
    assert draft.state == DraftState.DRAFT
    assert draft.version == 1
    event = last_event()
    assert event.action == "draft.created"
    assert event.actor_id == responder.pk
    assert event.changes["title"] == [None, "API errors"]


def test_auditor_cannot_create_a_draft(auditor, api_service):
    with pytest.raises(access.RoleRequired):
        workflow.create(user=auditor, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)


def test_save_bumps_version_and_audits_field_changes(draft, responder):
    saved = workflow.save(
        draft_id=draft.pk, user=responder, expected_version=1, fields={**FIELDS, "title": "API errors on EU"}
    )
    assert saved.version == 2
    assert saved.title == "API errors on EU"
    assert last_event().changes == {"title": ["API errors", "API errors on EU"]}


def test_a_stale_save_is_refused_with_the_current_version(draft, responder, approver):
    workflow.save(draft_id=draft.pk, user=approver, expected_version=1, fields={**FIELDS, "title": "Theirs"})
    with pytest.raises(workflow.EditConflict) as excinfo:
        workflow.save(draft_id=draft.pk, user=responder, expected_version=1, fields={**FIELDS, "title": "Mine"})
    assert excinfo.value.current.title == "Theirs"
    assert excinfo.value.current.version == 2
    draft.refresh_from_db()
    assert draft.title == "Theirs"


def test_submit_freezes_the_exact_request_and_its_hash(submitted, draft, responder, api_service):
    draft.refresh_from_db()
    assert draft.state == DraftState.IN_REVIEW
    request = submitted.requests.get()
    assert (request.position, request.service, request.target_remote_id) == (0, api_service, "")
    assert request.method == "POST"
    assert request.path == "/api/v2/incidents"
    # The documented key order, compact, exactly as it goes on the wire.
    expected = isdown.encode_body(
        {
            "service_id": 1001,
            "title": "API errors",
            "status": "major",
            "description": "Elevated 5xx on /v1.",
            "resolution_stage": "investigating",
        }
    )
    assert request.body == expected
    assert request.body.startswith('{"service_id":1001,"title":"API errors","status":"major",')
    assert request.sha256 == isdown.Request("POST", "/api/v2/incidents", expected).sha256
    assert submitted.sha256 == isdown.requests_sha256([(0, request.sha256)])
    # What is stored is what workflow.build_request makes of the draft now, text for text.
    [(service, built)] = workflow.draft_requests(draft)
    assert (service, built.body, built.sha256) == (api_service, request.body, request.sha256)
    assert last_event().action == "draft.submitted"
    assert last_event().changes["state"] == ["draft", "in_review"]


def test_submit_stores_non_ascii_text_as_utf8_not_escapes(responder, api_service):
    draft = workflow.create(
        user=responder, service=api_service, kind=DraftKind.OPEN, fields={**FIELDS, "title": "Störung in Zürich ⚠"}
    )
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    request = revision.requests.get()
    assert '"title":"Störung in Zürich ⚠"' in request.body
    assert request.sha256 == isdown.Request(request.method, request.path, request.body).sha256


def test_editing_during_review_is_refused(submitted, draft, responder):
    with pytest.raises(workflow.InvalidTransition, match="in review"):
        workflow.save(draft_id=draft.pk, user=responder, expected_version=draft.version, fields=FIELDS)


def test_withdraw_returns_to_draft_and_a_new_submit_makes_revision_2(submitted, draft, responder):
    workflow.withdraw(draft_id=draft.pk, user=responder)
    draft.refresh_from_db()
    assert draft.state == DraftState.DRAFT
    assert last_event().action == "draft.withdrawn"
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    assert revision.number == 2


def test_withdraw_outside_review_is_refused(draft, responder):
    with pytest.raises(workflow.InvalidTransition):
        workflow.withdraw(draft_id=draft.pk, user=responder)


def test_discard(draft, responder):
    workflow.discard(draft_id=draft.pk, user=responder)
    draft.refresh_from_db()
    assert draft.state == DraftState.DISCARDED
    with pytest.raises(workflow.InvalidTransition):
        workflow.submit(draft_id=draft.pk, user=responder)


def test_discard_in_review_is_refused(submitted, draft, responder):
    with pytest.raises(workflow.InvalidTransition):
        workflow.discard(draft_id=draft.pk, user=responder)


def test_approve_writes_review_publication_and_audit_in_one_go(submitted, draft, approver):
    with transaction.atomic():
        decision = approve(submitted, approver)
    draft.refresh_from_db()
    assert draft.state == DraftState.APPROVED
    assert decision.review.decision == "approve"
    publication = Publication.objects.get(revision=submitted)
    assert decision.publications == [publication]
    assert decision.publication == publication
    assert publication.state == "queued"
    request = submitted.requests.get()
    assert (publication.request, publication.service, publication.draft, publication.team) == (
        request,
        draft.service,
        draft,
        draft.team,
    )
    assert publication.incident is None
    assert publication.target_remote_id == ""
    assert last_event().action == "review.approved"


def test_the_review_records_the_approved_hash_and_so_does_the_audit_event(submitted, draft, approver):
    decision = approve(submitted, approver)
    review = Review.objects.get(revision=submitted)
    assert review == decision.review
    assert review.sha256 == submitted.sha256
    event = last_event()
    assert event.action == "review.approved"
    assert event.changes["sha256"] == [None, submitted.sha256]


@pytest.mark.parametrize("seen", ["", "0" * 64, "the request's own hash"])
def test_approving_without_the_revisions_hash_is_refused_and_writes_nothing(
    submitted, draft, approver, no_broker, django_capture_on_commit_callbacks, seen
):
    if seen == "the request's own hash":
        seen = submitted.requests.get().sha256  # a real hash, but not the one a review approves
    events = AuditEvent.objects.count()
    notes = Notification.objects.count()
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(workflow.StaleRevision, match="SHA-256"):
        workflow.approve(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver, sha256=seen)
    assert not Review.objects.exists()
    assert not Publication.objects.exists()
    assert AuditEvent.objects.count() == events
    assert Notification.objects.count() == notes
    assert no_broker.sent == []
    draft.refresh_from_db()
    assert draft.state == DraftState.IN_REVIEW


def test_approving_enqueues_one_publish_message_only_after_commit(
    submitted, draft, approver, no_broker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        decision = approve(submitted, approver)
        assert [call for call in no_broker.sent if call[0] == "publish"] == []
    assert [call for call in no_broker.sent if call[0] == "publish"] == [("publish", decision.publication.pk)]
    assert Publication.objects.get().last_enqueued_at is not None


def test_an_approval_that_rolls_back_enqueues_nothing(
    submitted, draft, approver, no_broker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        approve(submitted, approver)
        raise RuntimeError("the caller's transaction fails after the approval")
    assert no_broker.sent == []
    assert not Publication.objects.exists()


def test_author_cannot_approve_own_revision(api_service, approver, approver2):
    draft = workflow.create(user=approver, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    revision = workflow.submit(draft_id=draft.pk, user=approver)
    with pytest.raises(workflow.NotAllowed, match="someone else"):
        approve(revision, approver)
    assert not Review.objects.exists()
    approve(revision, approver2)
    assert Review.objects.get().reviewer == approver2


def test_last_editor_cannot_approve(draft, responder, approver, approver2):
    workflow.save(draft_id=draft.pk, user=approver, expected_version=1, fields={**FIELDS, "title": "Edited"})
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    with pytest.raises(workflow.NotAllowed):
        approve(revision, approver)
    assert not Review.objects.exists()
    approve(revision, approver2)
    assert Review.objects.get().reviewer == approver2


def test_responder_and_auditor_cannot_review(submitted, draft, responder, auditor):
    for user in (responder, auditor):
        with pytest.raises(access.RoleRequired, match="approver role"):
            approve(submitted, user)
    assert not Review.objects.exists()


def test_approve_twice_is_refused_and_changes_nothing(submitted, draft, approver, approver2):
    approve(submitted, approver)
    count = AuditEvent.objects.count()
    with pytest.raises(workflow.InvalidTransition, match="approved"):
        approve(submitted, approver2)
    assert Publication.objects.count() == 1
    assert AuditEvent.objects.count() == count


def test_approving_a_withdrawn_revision_is_refused(submitted, draft, responder, approver):
    workflow.withdraw(draft_id=draft.pk, user=responder)
    with pytest.raises(workflow.InvalidTransition):
        approve(submitted, approver)
    assert not Publication.objects.exists()


def test_approving_an_old_revision_is_refused(submitted, draft, responder, approver):
    workflow.withdraw(draft_id=draft.pk, user=responder)
    workflow.submit(draft_id=draft.pk, user=responder)
    with pytest.raises(workflow.StaleRevision):
        approve(submitted, approver)
    assert not Publication.objects.exists()


def test_request_changes_needs_a_comment_and_reopens_the_draft(submitted, draft, responder, approver):
    with pytest.raises(workflow.NotAllowed, match="comment"):
        workflow.request_changes(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver, comment="  ")
    workflow.request_changes(
        draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver, comment="Say which region."
    )
    draft.refresh_from_db()
    assert draft.state == DraftState.CHANGES_REQUESTED
    assert last_event().changes["comment"] == [None, "Say which region."]
    saved = workflow.save(draft_id=draft.pk, user=responder, expected_version=draft.version, fields=FIELDS)
    assert workflow.submit(draft_id=saved.pk, user=responder).number == 2


def test_reject_needs_a_comment_and_is_final(submitted, draft, responder, approver):
    with pytest.raises(workflow.NotAllowed):
        workflow.reject(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver, comment="")
    workflow.reject(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver, comment="Not an incident.")
    draft.refresh_from_db()
    assert draft.state == DraftState.REJECTED
    with pytest.raises(workflow.InvalidTransition):
        workflow.save(draft_id=draft.pk, user=responder, expected_version=draft.version, fields=FIELDS)


def test_update_draft_sends_only_what_changes(responder, api_service):
    incident = IncidentFactory(service=api_service, remote_id="55001", title="API errors", severity="minor")
    draft = workflow.create(
        user=responder,
        service=api_service,
        kind=DraftKind.UPDATE,
        incident=incident,
        fields={"title": "API errors", "severity": "major", "description": "Fix deployed.", "stage": "monitoring"},
    )
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    request = revision.requests.get()
    assert request.method == "PATCH"
    assert request.path == "/api/v2/incidents/55001"
    assert request.target_remote_id == "55001"
    assert request.body == isdown.encode_body(
        {"status": "major", "description": "Fix deployed.", "resolution_stage": "monitoring"}
    )
    assert revision.sha256 == isdown.requests_sha256([(0, request.sha256)])


def test_an_approved_update_publishes_to_its_incident(responder, approver, api_service):
    incident = IncidentFactory(service=api_service, remote_id="55004", title="API errors", severity="minor")
    draft = workflow.create(
        user=responder,
        service=api_service,
        kind=DraftKind.UPDATE,
        incident=incident,
        fields={"title": "API errors", "severity": "minor", "description": "Fixed.", "stage": "resolved"},
    )
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    publication = approve(revision, approver).publication
    assert (publication.incident, publication.target_remote_id) == (incident, "55004")


def test_update_draft_with_nothing_to_send_is_refused(responder, api_service):
    incident = IncidentFactory(service=api_service, remote_id="55002", title="Same", severity="minor")
    draft = workflow.create(
        user=responder,
        service=api_service,
        kind=DraftKind.UPDATE,
        incident=incident,
        fields={"title": "Same", "severity": "minor", "description": "", "stage": ""},
    )
    with pytest.raises(workflow.InvalidTransition, match="Nothing to send"):
        workflow.submit(draft_id=draft.pk, user=responder)


NOTHING_NEW = {"title": "Same", "severity": "minor", "description": "", "stage": ""}


def test_create_and_submit_leaves_no_draft_when_the_submit_is_refused(responder, api_service):
    incident = IncidentFactory(service=api_service, remote_id="55005", title="Same", severity="minor")
    events = AuditEvent.objects.count()
    with pytest.raises(workflow.InvalidTransition, match="Nothing to send"):
        workflow.create_and_submit(
            user=responder, service=api_service, kind=DraftKind.UPDATE, incident=incident, fields=NOTHING_NEW
        )
    assert not incident.drafts.exists()
    assert AuditEvent.objects.count() == events


def test_save_and_submit_saves_nothing_when_the_submit_is_refused(responder, api_service):
    incident = IncidentFactory(service=api_service, remote_id="55006", title="Same", severity="minor")
    draft = workflow.create(
        user=responder,
        service=api_service,
        kind=DraftKind.UPDATE,
        incident=incident,
        fields={**NOTHING_NEW, "severity": "major"},
    )
    events = AuditEvent.objects.count()
    with pytest.raises(workflow.InvalidTransition, match="Nothing to send"):
        workflow.save_and_submit(draft_id=draft.pk, user=responder, expected_version=1, fields=NOTHING_NEW)
    draft.refresh_from_db()
    assert (draft.severity, draft.version, draft.state) == ("major", 1, DraftState.DRAFT)
    assert AuditEvent.objects.count() == events


def test_save_and_submit_puts_the_saved_version_in_review(draft, responder):
    revision = workflow.save_and_submit(
        draft_id=draft.pk, user=responder, expected_version=1, fields={**FIELDS, "title": "API errors on EU"}
    )
    draft.refresh_from_db()
    assert (draft.state, draft.version) == (DraftState.IN_REVIEW, 2)
    assert revision.fields["title"] == "API errors on EU"
    assert list(AuditEvent.objects.order_by("-seq").values_list("action", flat=True)[:2]) == [
        "draft.submitted",
        "draft.saved",
    ]


def test_a_draft_keeps_its_service(draft, responder, api_service, dashboard_service):
    with pytest.raises(workflow.ServiceChanged):
        workflow.save(draft_id=draft.pk, user=responder, expected_version=1, fields=FIELDS, service=dashboard_service)
    draft.refresh_from_db()
    assert (draft.service_id, draft.version) == (api_service.pk, 1)
    assert last_event().action == "draft.created"


def test_update_of_an_unpublished_incident_is_refused(responder, api_service):
    incident = IncidentFactory(service=api_service, remote_id=None)
    with pytest.raises(workflow.InvalidTransition, match="not on IsDown"):
        workflow.create(user=responder, service=api_service, kind=DraftKind.UPDATE, incident=incident, fields=FIELDS)


REVIEW_INSERT = (
    "INSERT INTO incidents_review (revision_id, reviewer_id, revision_author_id, revision_last_editor_id,"
    " revision_editors, decision, comment, sha256, created_at)"
    " VALUES (%s, %s, %s, %s, (SELECT editors FROM incidents_revision WHERE id = %s), 'approve', '', %s, now())"
)


def test_the_database_refuses_a_self_review_even_from_raw_sql(submitted, responder):
    with pytest.raises(IntegrityError, match="review_four_eyes"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            REVIEW_INSERT, [submitted.pk, responder.pk, responder.pk, responder.pk, submitted.pk, submitted.sha256]
        )
    assert not Review.objects.exists()


def test_the_database_refuses_a_review_that_lies_about_the_author(submitted, responder, approver):
    # Claim the approver is not the author by writing someone else into every copied column.
    lying = REVIEW_INSERT.replace("(SELECT editors FROM incidents_revision WHERE id = %s)", "ARRAY[%s]::bigint[]")
    with (
        pytest.raises(IntegrityError, match=r"review_matches_revision_(author_editor|editors)"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(lying, [submitted.pk, responder.pk, approver.pk, approver.pk, approver.pk, submitted.sha256])
        # The composite foreign keys are deferred; make them check now, as a commit would.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert not Review.objects.exists()


def test_the_database_refuses_an_approval_that_binds_no_hash(submitted, responder, approver):
    with (
        pytest.raises(IntegrityError, match="review_approval_binds_hash"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(REVIEW_INSERT, [submitted.pk, approver.pk, responder.pk, responder.pk, submitted.pk, ""])
    assert not Review.objects.exists()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE incidents_revision SET sha256 = 'forged' WHERE id = %(revision)s",
        "UPDATE incidents_revision SET fields = '{}'::jsonb WHERE id = %(revision)s",
        "DELETE FROM incidents_revision WHERE id = %(revision)s",
        'UPDATE incidents_revisionrequest SET body = \'{"title":"forged"}\' WHERE revision_id = %(revision)s',
        "UPDATE incidents_revisionrequest SET path = '/api/v2/incidents/1' WHERE revision_id = %(revision)s",
        "DELETE FROM incidents_revisionrequest WHERE revision_id = %(revision)s",
    ],
)
def test_the_database_refuses_to_change_a_revision_or_its_requests(submitted, sql):
    request = submitted.requests.get()
    with pytest.raises(DatabaseError, match="is immutable"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, {"revision": submitted.pk})
    assert Revision.objects.get(pk=submitted.pk).sha256 == submitted.sha256
    stored = RevisionRequest.objects.get(pk=request.pk)
    assert (stored.path, stored.body) == (request.path, request.body)


def test_the_orm_cannot_change_a_revision_either(submitted):
    with pytest.raises(DatabaseError, match="is immutable"), transaction.atomic():
        Revision.objects.filter(pk=submitted.pk).update(number=7)
    with pytest.raises(DatabaseError, match="is immutable"), transaction.atomic():
        RevisionRequest.objects.filter(revision=submitted).update(method="DELETE")
    assert Revision.objects.get(pk=submitted.pk).number == submitted.number


def test_one_publication_per_revision_and_target(submitted, draft, approver, dashboard_service):
    publication = approve(submitted, approver).publication
    # The same request twice.
    with pytest.raises(IntegrityError), transaction.atomic():
        Publication.objects.create(
            revision=submitted, request=publication.request, draft=draft, team=draft.team, service=draft.service
        )
    # Another request of the revision, but the same target service.
    other = RevisionRequest.objects.create(
        revision=submitted,
        position=1,
        service=dashboard_service,
        method="POST",
        path="/api/v2/incidents",
        body="{}",
        sha256="0" * 64,
    )
    with pytest.raises(IntegrityError, match="publication_one_per_revision_target"), transaction.atomic():
        Publication.objects.create(
            revision=submitted, request=other, draft=draft, team=draft.team, service=draft.service
        )
    assert Publication.objects.count() == 1


def test_revisions_keep_the_chain_valid_through_a_whole_scenario(draft, responder, approver, approver2):
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    workflow.request_changes(draft_id=draft.pk, revision_id=revision.pk, reviewer=approver, comment="More detail")
    draft.refresh_from_db()
    workflow.save(draft_id=draft.pk, user=responder, expected_version=draft.version, fields=FIELDS)
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    approve(revision, approver2)
    assert Revision.objects.filter(draft=draft).count() == 2
    assert list(
        AuditEvent.objects.filter(target_type="draft", target_id=str(draft.pk))
        .order_by("seq")
        .values_list("action", flat=True)
    ) == [
        "draft.created",
        "draft.submitted",
        "review.changes_requested",
        "draft.saved",
        "draft.submitted",
        "review.approved",
    ]
    result = verify_chain()
    assert result.ok, result.message()


# --- Following the publications -----------------------------------------------------------------------------
def set_publication_state(draft, state: str) -> None:
    Publication.objects.filter(draft=draft).update(state=state)


def test_an_approved_draft_follows_its_publication_to_published(submitted, draft, approver):
    approve(submitted, approver)
    assert workflow.follow_publications(draft_id=draft.pk) == DraftState.PUBLISHING  # queued
    set_publication_state(draft, PublicationState.SENDING)
    assert workflow.follow_publications(draft_id=draft.pk) is None  # still publishing: no change
    set_publication_state(draft, PublicationState.PUBLISHED)
    assert workflow.follow_publications(draft_id=draft.pk) == DraftState.PUBLISHED
    draft.refresh_from_db()
    assert draft.state == DraftState.PUBLISHED


@pytest.mark.parametrize(
    ("publication_state", "draft_state"),
    [
        (PublicationState.FAILED, DraftState.FAILED),
        (PublicationState.NEEDS_ATTENTION, DraftState.NEEDS_ATTENTION),
        (PublicationState.DUPLICATE_DETECTED, DraftState.NEEDS_ATTENTION),
        (PublicationState.ABANDONED, DraftState.ABANDONED),
    ],
)
def test_a_publishing_draft_follows_its_publication_to_where_a_human_is_needed(
    submitted, draft, approver, publication_state, draft_state
):
    approve(submitted, approver)
    set_publication_state(draft, PublicationState.RECONCILING)
    assert workflow.follow_publications(draft_id=draft.pk) == DraftState.PUBLISHING
    set_publication_state(draft, publication_state)
    assert workflow.follow_publications(draft_id=draft.pk) == draft_state
    draft.refresh_from_db()
    assert draft.state == draft_state


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({"published", "failed", "queued"}, DraftState.FAILED),
        ({"published", "needs_attention", "sending"}, DraftState.NEEDS_ATTENTION),
        ({"published", "duplicate_detected", "retry_wait"}, DraftState.NEEDS_ATTENTION),
        ({"published", "queued"}, DraftState.PUBLISHING),
        ({"published", "sending"}, DraftState.PUBLISHING),
        ({"published", "retry_wait"}, DraftState.PUBLISHING),
        ({"abandoned", "reconciling"}, DraftState.PUBLISHING),
        ({"published", "abandoned"}, DraftState.PUBLISHED),
        ({"published"}, DraftState.PUBLISHED),
        ({"abandoned"}, DraftState.ABANDONED),
    ],
)
def test_publishing_state_shows_the_publication_most_in_need_of_a_human(states, expected):
    assert workflow.publishing_state(states) == expected


@pytest.mark.parametrize("state", [DraftState.IN_REVIEW, DraftState.REJECTED, DraftState.DISCARDED])
def test_a_draft_that_is_not_approved_never_follows_publications(submitted, draft, approver, responder, state):
    # With no publications at all, a draft that followed would become "abandoned".
    if state == DraftState.REJECTED:
        workflow.reject(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver, comment="No.")
    elif state == DraftState.DISCARDED:
        workflow.withdraw(draft_id=draft.pk, user=responder)
        workflow.discard(draft_id=draft.pk, user=responder)
    events = AuditEvent.objects.count()
    assert workflow.follow_publications(draft_id=draft.pk) is None
    draft.refresh_from_db()
    assert draft.state == state
    assert AuditEvent.objects.count() == events


# --- Emails ------------------------------------------------------------------------------------------------
def test_submit_writes_the_review_email_for_the_teams_other_approvers_and_sends_it_only_on_delivery(
    api_service, approver, approver2, auditor, outsider, responder, no_broker, django_capture_on_commit_callbacks
):
    draft = workflow.create(user=approver, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    with django_capture_on_commit_callbacks(execute=True):
        revision = workflow.submit(draft_id=draft.pk, user=approver)
        # Written in the submit's own transaction, sent by nobody yet.
        notification = Notification.objects.get(kind="review_needed")
        assert no_broker.sent == []
    # The author is an approver too, but is not asked to review their own words.
    assert notification.recipients == ["approver2@example.com"]
    assert (notification.team, notification.target_type, notification.target_id) == (
        draft.team,
        "draft",
        str(draft.pk),
    )
    assert notification.state == "pending"
    assert no_broker.sent == [("deliver_notification", notification.pk)]
    assert mail.outbox == []

    assert notifications.deliver_due() == {"sent": 1}
    [message] = mail.outbox
    assert message.to == ["approver2@example.com"]
    assert "Review needed" in message.subject
    assert f"revision {revision.number} of draft #{draft.pk}" in message.body
    assert f"/drafts/{draft.pk}/review/" in message.body
    notification.refresh_from_db()
    assert notification.state == "sent"
    assert notifications.deliver_due() == {}  # sent once
    assert len(mail.outbox) == 1


def test_a_submit_whose_email_cannot_be_written_does_not_happen(draft, responder, approver, monkeypatch):
    def refuse(revision):
        raise DatabaseError("the outbox is unavailable")

    monkeypatch.setattr(notifications, "revision_submitted", refuse)
    events = AuditEvent.objects.count()
    with pytest.raises(DatabaseError):
        workflow.submit(draft_id=draft.pk, user=responder)
    draft.refresh_from_db()
    assert draft.state == DraftState.DRAFT
    assert not Revision.objects.exists()
    assert AuditEvent.objects.count() == events


def test_a_review_decision_emails_the_author_with_the_comment_and_a_link(submitted, draft, approver):
    workflow.request_changes(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver, comment="Which region?")
    notification = Notification.objects.get(kind="reviewed")
    assert notification.recipients == ["responder@example.com"]
    assert mail.outbox == []
    notifications.deliver_due()
    [message] = [m for m in mail.outbox if m.to == ["responder@example.com"]]
    assert "Changes requested" in message.subject
    assert "Which region?" in message.body
    assert f"/drafts/{draft.pk}/" in message.body


# --- Four eyes over every editor (issue 9, item 6) ----------------------------------------------------------------
def test_an_approver_who_saved_a_version_cannot_approve_after_the_author_saves_again(
    draft, responder, approver, approver2
):
    """The middle-editor gap: the approver edits, the author fixes a typo and submits; the approver wrote part of
    the text and must not approve it."""
    workflow.save(draft_id=draft.pk, user=approver, expected_version=draft.version, fields={**FIELDS, "title": "Mine"})
    draft.refresh_from_db()
    workflow.save(draft_id=draft.pk, user=responder, expected_version=draft.version, fields={**FIELDS, "title": "Typo"})
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    assert revision.editors == sorted([responder.pk, approver.pk])

    with pytest.raises(workflow.NotAllowed, match="wrote or edited"):
        approve(revision, approver)
    assert not Review.objects.exists()
    assert approve(revision, approver2).review.revision_editors == revision.editors


def test_a_co_author_stays_one_after_a_request_changes_round(draft, responder, approver, approver2):
    workflow.save(draft_id=draft.pk, user=approver, expected_version=draft.version, fields={**FIELDS, "title": "Mine"})
    first = workflow.submit(draft_id=draft.pk, user=responder)
    workflow.request_changes(draft_id=draft.pk, revision_id=first.pk, reviewer=approver2, comment="Shorter.")
    draft.refresh_from_db()
    workflow.save(draft_id=draft.pk, user=responder, expected_version=draft.version, fields={**FIELDS, "title": "New"})
    second = workflow.submit(draft_id=draft.pk, user=responder)

    assert approver.pk in second.editors
    with pytest.raises(workflow.NotAllowed):
        approve(second, approver)


def test_the_database_refuses_a_review_by_any_editor_even_from_raw_sql(draft, responder, approver):
    workflow.save(draft_id=draft.pk, user=approver, expected_version=draft.version, fields={**FIELDS, "title": "Mine"})
    draft.refresh_from_db()
    workflow.save(draft_id=draft.pk, user=responder, expected_version=draft.version, fields={**FIELDS, "title": "Typo"})
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    with (
        pytest.raises(IntegrityError, match="review_four_eyes_every_editor"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            REVIEW_INSERT, [revision.pk, approver.pk, responder.pk, responder.pk, revision.pk, revision.sha256]
        )
    assert not Review.objects.exists()


def test_the_database_refuses_a_review_that_lies_about_the_editors(draft, responder, approver):
    workflow.save(draft_id=draft.pk, user=approver, expected_version=draft.version, fields={**FIELDS, "title": "Mine"})
    draft.refresh_from_db()
    workflow.save(draft_id=draft.pk, user=responder, expected_version=draft.version, fields={**FIELDS, "title": "Typo"})
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    lying = REVIEW_INSERT.replace("(SELECT editors FROM incidents_revision WHERE id = %s)", "ARRAY[%s]::bigint[]")
    with (
        pytest.raises(IntegrityError, match="review_matches_revision_editors"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(lying, [revision.pk, approver.pk, responder.pk, responder.pk, responder.pk, revision.sha256])
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert not Review.objects.exists()
