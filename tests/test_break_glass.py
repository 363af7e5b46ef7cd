"""Break-glass (issue 12 §4): an approver publishes their own revision without a second approver, after a fresh
TOTP check and a written reason; every other approver is emailed; someone else must review it afterwards. And the
database's four-eyes guards, which allow exactly this decision and no other self-approval."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.core.checks import run_checks
from django.db import IntegrityError, connection, transaction
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from incidents import access, mfa, workflow
from incidents.models import (
    AuditEvent,
    BreakGlassPostReview,
    DraftKind,
    DraftState,
    Notification,
    Publication,
    Review,
    ReviewDecision,
)

from .factories import IncidentFactory

pytestmark = pytest.mark.django_db

FIELDS = {"title": "API errors", "severity": "major", "description": "Elevated 5xx on /v1.", "stage": "investigating"}
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def code_at(moment: datetime, secret: str = SECRET) -> str:
    """The code an authenticator app shows at ``moment`` (allauth's own HOTP over 30-second steps)."""
    return format_hotp_value(hotp_value(secret, int(moment.timestamp()) // 30))


def enrolled(user, now: datetime | None = None):
    now = now or timezone.now()
    return mfa.enrol(user=user, secret=SECRET, code=code_at(now - timedelta(seconds=30)), now=now)


@pytest.fixture
def own_revision(approver, api_service):
    """An approver's own draft, in review: nobody else has answered."""
    draft = workflow.create(user=approver, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    return workflow.submit(draft_id=draft.pk, user=approver)


def break_glass(revision, user, *, code: str, reason: str = "Outage ongoing; approver2 unreachable by phone.", **kw):
    return workflow.break_glass(
        draft_id=revision.draft_id,
        revision_id=revision.pk,
        user=user,
        sha256=revision.sha256,
        reason=reason,
        totp_code=code,
        **kw,
    )


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))


# --- Enrolment --------------------------------------------------------------------------------------------------
def test_enrolment_needs_the_code_the_app_shows_and_gives_recovery_codes(approver):
    now = timezone.now()
    with pytest.raises(mfa.MfaError, match="does not match"):
        mfa.enrol(user=approver, secret=SECRET, code="000000" if code_at(now) != "000000" else "111111", now=now)
    assert not mfa.has_totp(approver)
    enrolment = enrolled(approver, now)
    assert mfa.has_totp(approver)
    assert len(enrolment.recovery_codes) == 10 and enrolment.recovery_codes == mfa.recovery_codes(approver)
    assert actions()[-1] == "mfa.enrolled"


# --- Break-glass ------------------------------------------------------------------------------------------------
def test_break_glass_publishes_marks_it_and_emails_every_other_approver(
    own_revision, approver, approver2, responder, no_broker, django_capture_on_commit_callbacks
):
    now = timezone.now()
    enrolled(approver, now - timedelta(minutes=5))
    with django_capture_on_commit_callbacks(execute=True):
        decision = break_glass(own_revision, approver, code=code_at(now), now=now)
    review = decision.review
    assert review.decision == ReviewDecision.BREAK_GLASS and review.is_break_glass
    assert review.reviewer == approver and review.sha256 == own_revision.sha256
    assert review.comment.startswith("Outage ongoing")
    own_revision.draft.refresh_from_db()
    assert own_revision.draft.state == DraftState.APPROVED
    assert [p.pk for p in Publication.objects.filter(revision=own_revision)] == [decision.publication.pk]
    assert ("publish", decision.publication.pk) in no_broker.sent
    assert actions()[-2:] == ["mfa.code_accepted", "review.break_glass"]
    email = Notification.objects.get(kind="break_glass")
    assert email.recipients == ["approver2@example.com"]  # every other approver, not the one who broke the glass
    assert "BREAK-GLASS" in email.subject and "approver2 unreachable" in email.body
    assert ("deliver_notification", email.pk) in no_broker.sent


def test_a_responder_can_never_break_the_glass(responder, api_service, no_broker):
    draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    enrolled(responder)
    with pytest.raises(access.RoleRequired, match="approver role"):
        break_glass(revision, responder, code=code_at(timezone.now()))
    assert not Review.objects.exists()


def test_break_glass_needs_an_enrolled_authenticator(own_revision, approver, no_broker):
    with pytest.raises(workflow.MfaRequired, match="enrol"):
        break_glass(own_revision, approver, code="123456")
    assert not Review.objects.exists()


def test_break_glass_needs_a_reason(own_revision, approver, no_broker):
    enrolled(approver)
    with pytest.raises(workflow.NotAllowed, match="reason is required"):
        break_glass(own_revision, approver, code=code_at(timezone.now()), reason="   ")
    assert not Review.objects.exists()


def test_a_wrong_code_is_refused_and_audited(own_revision, approver, no_broker):
    now = timezone.now()
    enrolled(approver, now - timedelta(minutes=5))
    wrong = "000000" if code_at(now) != "000000" else "111111"
    with pytest.raises(workflow.NotAllowed, match="not the one your authenticator app shows"):
        break_glass(own_revision, approver, code=wrong, now=now)
    assert not Review.objects.exists()
    refused = AuditEvent.objects.filter(action="mfa.code_refused").get()
    assert refused.actor_id == approver.pk and "break the glass" in refused.summary


def test_an_old_code_is_refused(own_revision, approver, no_broker):
    now = timezone.now()
    enrolled(approver, now - timedelta(minutes=10))
    with pytest.raises(workflow.NotAllowed, match="not the one"):
        break_glass(own_revision, approver, code=code_at(now - timedelta(minutes=3)), now=now)
    assert not Review.objects.exists()


def test_a_code_is_accepted_once_even_within_its_window(own_revision, approver, api_service, no_broker):
    now = timezone.now()
    enrolled(approver, now - timedelta(minutes=10))
    code = code_at(now)
    break_glass(own_revision, approver, code=code, now=now)
    other = workflow.create(user=approver, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    revision = workflow.submit(draft_id=other.pk, user=approver)
    with pytest.raises(workflow.NotAllowed, match="already used"):
        break_glass(revision, approver, code=code, now=now + timedelta(seconds=5))
    assert actions()[-1] == "mfa.code_refused"


def test_break_glass_on_someone_elses_draft_is_refused_approve_it_instead(responder, approver, api_service, no_broker):
    draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    now = timezone.now()
    enrolled(approver, now - timedelta(minutes=5))
    with pytest.raises(workflow.NotAllowed, match="approve it instead"):
        break_glass(revision, approver, code=code_at(now), now=now)
    assert not Review.objects.exists()


def test_break_glass_binds_the_hash_the_approver_saw(own_revision, approver, no_broker):
    now = timezone.now()
    enrolled(approver, now - timedelta(minutes=5))
    with pytest.raises(workflow.StaleRevision):
        workflow.break_glass(
            draft_id=own_revision.draft_id,
            revision_id=own_revision.pk,
            user=approver,
            sha256="0" * 64,
            reason="Outage",
            totp_code=code_at(now),
            now=now,
        )
    assert not Review.objects.exists()


def test_the_review_form_cannot_smuggle_a_break_glass_decision(own_revision, approver2, as_user):
    response = as_user(approver2).post(
        reverse("incidents:draft_review", kwargs={"pk": own_revision.draft_id}),
        {"decision": "break_glass", "revision": own_revision.pk, "sha256": own_revision.sha256, "comment": "x"},
    )
    assert response.status_code == 422
    assert not Review.objects.exists()


# --- The after-the-fact review ------------------------------------------------------------------------------------
@pytest.fixture
def broken(own_revision, approver, no_broker):
    now = timezone.now()
    enrolled(approver, now - timedelta(minutes=5))
    return break_glass(own_revision, approver, code=code_at(now), now=now).review


def test_the_one_who_broke_the_glass_cannot_post_review_it(broken, approver):
    with pytest.raises(workflow.NotAllowed, match="another approver"):
        workflow.post_review(review_id=broken.pk, user=approver, comment="fine")
    assert not BreakGlassPostReview.objects.exists()


def test_a_responder_cannot_post_review(broken, responder):
    with pytest.raises(access.RoleRequired):
        workflow.post_review(review_id=broken.pk, user=responder)


def test_another_approver_post_reviews_it_once_and_it_is_audited(broken, approver2):
    post = workflow.post_review(review_id=broken.pk, user=approver2, comment="Words were right.")
    assert post.break_glass_by_id == broken.reviewer_id
    event = AuditEvent.objects.order_by("-seq").first()
    assert event.action == "review.post_reviewed" and event.actor_id == approver2.pk
    with pytest.raises(workflow.InvalidTransition, match="already"):
        workflow.post_review(review_id=broken.pk, user=approver2)


def test_an_ordinary_approval_is_not_post_reviewed(responder, approver, api_service, no_broker):
    draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    review = workflow.approve(draft_id=draft.pk, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256)
    with pytest.raises(workflow.InvalidTransition, match="Only a break-glass"):
        workflow.post_review(review_id=review.review.pk, user=approver)


# --- The database's guards ------------------------------------------------------------------------------------
REVIEW_INSERT = (
    "INSERT INTO incidents_review (revision_id, reviewer_id, revision_author_id, revision_last_editor_id,"
    " revision_editors, decision, comment, sha256, created_at)"
    " VALUES (%s, %s, %s, %s, (SELECT editors FROM incidents_revision WHERE id = %s), %s, %s, %s, now())"
)


def _insert_self_review(revision, user, decision: str, comment: str, sha256: str) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(REVIEW_INSERT, [revision.pk, user.pk, user.pk, user.pk, revision.pk, decision, comment, sha256])
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


@pytest.mark.parametrize("decision", ["approve", "request_changes", "reject"])
def test_the_database_still_refuses_every_other_self_review(own_revision, approver, decision):
    with pytest.raises(IntegrityError, match="review_four_eyes"):
        _insert_self_review(own_revision, approver, decision, "a comment", own_revision.sha256)
    assert not Review.objects.exists()


def test_the_database_allows_a_self_review_only_as_break_glass(own_revision, approver):
    _insert_self_review(own_revision, approver, "break_glass", "Outage", own_revision.sha256)
    assert Review.objects.get().decision == "break_glass"


def test_the_database_refuses_a_break_glass_without_a_reason(own_revision, approver):
    with pytest.raises(IntegrityError, match="review_comment_required_unless_approve"):
        _insert_self_review(own_revision, approver, "break_glass", "", own_revision.sha256)


def test_the_database_refuses_a_break_glass_without_the_hash(own_revision, approver):
    with pytest.raises(IntegrityError, match="review_approval_binds_hash"):
        _insert_self_review(own_revision, approver, "break_glass", "Outage", "")


def test_the_database_refuses_a_post_review_by_the_one_who_broke_the_glass(broken, approver, approver2):
    sql = (
        "INSERT INTO incidents_breakglasspostreview (review_id, break_glass_by_id, reviewer_id, comment, created_at)"
        " VALUES (%s, %s, %s, '', now())"
    )
    with (
        pytest.raises(IntegrityError, match="break_glass_post_review_by_someone_else"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [broken.pk, approver.pk, approver.pk])
    # Nor can a post-review lie about who broke the glass.
    with (
        pytest.raises(IntegrityError, match="break_glass_post_review_names_the_reviewer"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [broken.pk, approver2.pk, approver.pk])
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert not BreakGlassPostReview.objects.exists()


# --- MFA required for approvers ---------------------------------------------------------------------------------
@override_settings(MFA_REQUIRED_FOR_APPROVERS=True)
def test_with_mfa_required_an_approver_without_an_authenticator_is_sent_to_enrol(
    responder, approver, api_service, as_user, no_broker
):
    draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    with pytest.raises(workflow.MfaRequired):
        workflow.approve(draft_id=draft.pk, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256)
    response = as_user(approver).post(
        reverse("incidents:draft_review", kwargs={"pk": draft.pk}),
        {"decision": "approve", "revision": revision.pk, "sha256": revision.sha256, "comment": ""},
    )
    assert response.status_code == 302 and response["Location"].startswith(reverse("incidents:mfa_setup"))
    assert not Review.objects.exists()
    enrolled(approver)
    workflow.approve(draft_id=draft.pk, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256)
    assert Review.objects.get().decision == "approve"


def test_the_deploy_check_warns_when_mfa_is_not_required():
    with override_settings(MFA_REQUIRED_FOR_APPROVERS=False):
        assert "isdown.W004" in {m.id for m in run_checks(include_deployment_checks=True, tags=None)}
    with override_settings(MFA_REQUIRED_FOR_APPROVERS=True):
        assert "isdown.W004" not in {m.id for m in run_checks(include_deployment_checks=True, tags=None)}


# --- Marked everywhere --------------------------------------------------------------------------------------------
def test_a_break_glass_update_is_marked_on_the_incident_draft_review_and_dashboard(
    approver, approver2, api_service, as_user, no_broker
):
    incident = IncidentFactory(service=api_service, remote_id="inc-bg", title="API errors")
    draft = workflow.create(
        user=approver,
        service=api_service,
        kind=DraftKind.UPDATE,
        incident=incident,
        fields={"title": "", "severity": "", "description": "Fixed.", "stage": "monitoring"},
    )
    revision = workflow.submit(draft_id=draft.pk, user=approver)
    now = timezone.now()
    enrolled(approver, now - timedelta(minutes=5))
    review = break_glass(revision, approver, code=code_at(now), now=now).review
    client = as_user(approver2)
    pages = {
        "incident": client.get(reverse("incidents:incident_detail", kwargs={"pk": incident.pk})),
        "draft": client.get(reverse("incidents:draft_detail", kwargs={"pk": draft.pk})),
        "review": client.get(reverse("incidents:draft_review", kwargs={"pk": draft.pk})),
        "dashboard": client.get(reverse("incidents:dashboard")),
    }
    for name, response in pages.items():
        assert "break-glass-box" in response.content.decode(), name
    assert 'id="post-review-form"' in pages["review"].content.decode()
    assert f'id="break-glass-flag-{review.pk}"' in pages["incident"].content.decode()
    audit_page = client.get(reverse("incidents:audit_log")).content.decode()
    assert "Published without review (break-glass)" in audit_page
    # Once reviewed after the fact: off the dashboard, still marked on the incident.
    workflow.post_review(review_id=review.pk, user=approver2)
    assert 'id="banner-break-glass"' not in client.get(reverse("incidents:dashboard")).content.decode()
    incident_page = client.get(reverse("incidents:incident_detail", kwargs={"pk": incident.pk})).content.decode()
    assert "reviewed it after the fact" in incident_page


# --- Recovery codes ----------------------------------------------------------------------------------------------
def test_a_recovery_code_replaces_a_lost_app_once(approver):
    codes = enrolled(approver).recovery_codes
    with pytest.raises(mfa.MfaError, match="not one of yours"):
        mfa.replace_with_recovery_code(user=approver, code="00000000")
    assert mfa.has_totp(approver)
    mfa.replace_with_recovery_code(user=approver, code=codes[0])
    assert not mfa.has_totp(approver)
    assert codes[0] not in mfa.recovery_codes(approver) and len(mfa.recovery_codes(approver)) == 9
    assert "mfa.replaced" in actions()
