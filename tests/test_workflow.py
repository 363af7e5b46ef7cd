"""Every transition and every refusal of workflow.py, and the database's own guards."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from incidents import access, workflow
from incidents.audit import verify_chain
from incidents.models import AuditEvent, DraftKind, DraftState, Publication, Review, Revision

from .factories import IncidentFactory

pytestmark = pytest.mark.django_db

FIELDS = {"title": "API errors", "severity": "major", "description": "Elevated 5xx on /v1.", "stage": "investigating"}


@pytest.fixture
def draft(responder, api_service):
    return workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)


@pytest.fixture
def submitted(draft, responder):
    return workflow.submit(draft_id=draft.pk, user=responder)


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """Approvals enqueue on commit; these tests look at the database, not at the broker."""
    calls: list[int] = []
    monkeypatch.setattr("incidents.tasks.enqueue_publication", calls.append, raising=False)
    return calls


def last_event() -> AuditEvent:
    return AuditEvent.objects.order_by("-seq").first()


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


def test_submit_freezes_the_exact_request_and_its_hash(submitted, draft, responder):
    draft.refresh_from_db()
    assert draft.state == DraftState.IN_REVIEW
    assert submitted.method == "POST"
    assert submitted.path == "/api/v2/incidents"
    assert submitted.body == {
        "service_id": 1001,
        "title": "API errors",
        "status": "major",
        "description": "Elevated 5xx on /v1.",
        "resolution_stage": "investigating",
    }
    assert submitted.sha256 == workflow.request_sha256(submitted.method, submitted.path, submitted.body)
    assert last_event().action == "draft.submitted"
    assert last_event().changes["state"] == ["draft", "in_review"]


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


def test_approve_writes_review_publication_and_audit_in_one_go(submitted, draft, approver, no_broker):
    with transaction.atomic():
        decision = workflow.approve(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver)
    draft.refresh_from_db()
    assert draft.state == DraftState.APPROVED
    assert decision.review.decision == "approve"
    publication = Publication.objects.get(revision=submitted)
    assert publication.state == "queued"
    assert last_event().action == "review.approved"


def test_author_cannot_approve_own_revision(api_service, approver, approver2):
    draft = workflow.create(user=approver, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    revision = workflow.submit(draft_id=draft.pk, user=approver)
    with pytest.raises(workflow.NotAllowed, match="someone else"):
        workflow.approve(draft_id=draft.pk, revision_id=revision.pk, reviewer=approver)
    assert not Review.objects.exists()
    workflow.approve(draft_id=draft.pk, revision_id=revision.pk, reviewer=approver2)


def test_last_editor_cannot_approve(draft, responder, approver, approver2):
    workflow.save(draft_id=draft.pk, user=approver, expected_version=1, fields={**FIELDS, "title": "Edited"})
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    with pytest.raises(workflow.NotAllowed):
        workflow.approve(draft_id=draft.pk, revision_id=revision.pk, reviewer=approver)
    workflow.approve(draft_id=draft.pk, revision_id=revision.pk, reviewer=approver2)


def test_responder_and_auditor_cannot_review(submitted, draft, responder, auditor):
    for user in (responder, auditor):
        with pytest.raises(access.RoleRequired, match="approver role"):
            workflow.approve(draft_id=draft.pk, revision_id=submitted.pk, reviewer=user)


def test_approve_twice_is_refused_and_changes_nothing(submitted, draft, approver, approver2):
    workflow.approve(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver)
    count = AuditEvent.objects.count()
    with pytest.raises(workflow.InvalidTransition, match="approved"):
        workflow.approve(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver2)
    assert Publication.objects.count() == 1
    assert AuditEvent.objects.count() == count


def test_approving_a_withdrawn_revision_is_refused(submitted, draft, responder, approver):
    workflow.withdraw(draft_id=draft.pk, user=responder)
    with pytest.raises(workflow.InvalidTransition):
        workflow.approve(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver)


def test_approving_an_old_revision_is_refused(submitted, draft, responder, approver):
    workflow.withdraw(draft_id=draft.pk, user=responder)
    workflow.submit(draft_id=draft.pk, user=responder)
    with pytest.raises(workflow.StaleRevision):
        workflow.approve(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver)


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
    assert revision.method == "PATCH"
    assert revision.path == "/api/v2/incidents/55001"
    assert revision.body == {"status": "major", "description": "Fix deployed.", "resolution_stage": "monitoring"}


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


def test_update_of_an_unpublished_incident_is_refused(responder, api_service):
    incident = IncidentFactory(service=api_service, remote_id=None)
    with pytest.raises(workflow.InvalidTransition, match="not on IsDown"):
        workflow.create(user=responder, service=api_service, kind=DraftKind.UPDATE, incident=incident, fields=FIELDS)


def test_the_database_refuses_a_self_review_even_from_raw_sql(submitted, responder):
    with pytest.raises(IntegrityError, match="review_four_eyes"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO incidents_review (revision_id, reviewer_id, revision_author_id, revision_last_editor_id,"
            " decision, comment, created_at) VALUES (%s, %s, %s, %s, 'approve', '', now())",
            [submitted.pk, responder.pk, responder.pk, responder.pk],
        )


def test_the_database_refuses_a_review_that_lies_about_the_author(submitted, responder, approver):
    # Claim the approver is not the author by writing someone else into the copied columns.
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO incidents_review (revision_id, reviewer_id, revision_author_id, revision_last_editor_id,"
            " decision, comment, created_at) VALUES (%s, %s, %s, %s, 'approve', '', now())",
            [submitted.pk, responder.pk, approver.pk, approver.pk],
        )
        # The composite foreign key is deferred; make it check now, as a commit would.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_one_publication_per_revision(submitted, draft, approver):
    workflow.approve(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver)
    with pytest.raises(IntegrityError), transaction.atomic():
        Publication.objects.create(revision=submitted, draft=draft, team=draft.team)


def test_revisions_keep_the_chain_valid_through_a_whole_scenario(draft, responder, approver, approver2):
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    workflow.request_changes(draft_id=draft.pk, revision_id=revision.pk, reviewer=approver, comment="More detail")
    draft.refresh_from_db()
    workflow.save(draft_id=draft.pk, user=responder, expected_version=draft.version, fields=FIELDS)
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    workflow.approve(draft_id=draft.pk, revision_id=revision.pk, reviewer=approver2)
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


def test_an_approved_draft_follows_its_publication_only_forward(submitted, draft, approver):
    workflow.approve(draft_id=draft.pk, revision_id=submitted.pk, reviewer=approver)
    assert workflow.follow_publication(draft_id=draft.pk, state=DraftState.PUBLISHING)
    assert workflow.follow_publication(draft_id=draft.pk, state=DraftState.PUBLISHED)
    # Stale news of a failure cannot undo a publication.
    assert not workflow.follow_publication(draft_id=draft.pk, state=DraftState.FAILED)
    draft.refresh_from_db()
    assert draft.state == DraftState.PUBLISHED


def test_a_draft_in_review_does_not_follow_a_publication(submitted, draft):
    assert not workflow.follow_publication(draft_id=draft.pk, state=DraftState.PUBLISHING)
    draft.refresh_from_db()
    assert draft.state == DraftState.IN_REVIEW
