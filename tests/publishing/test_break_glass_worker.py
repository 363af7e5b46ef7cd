"""Break-glass (issue 12 §4) reaches IsDown: a real worker sends the revision an approver published without a second
approver, once, as approved. The worker's integrity check must accept a break-glass decision (it binds the hash like
an approval); any other self-review is still refused by the database (tests/test_break_glass.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.utils import timezone

from incidents import mfa, workflow
from incidents.models import DraftKind, DraftState, Publication, PublicationState, ReviewDecision
from tests.waiting import wait_for

from .conftest import sandbox_requests

pytestmark = pytest.mark.worker

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
FIELDS = {"title": "Checkout down", "severity": "major", "description": "Payments fail.", "stage": "investigating"}


def _code(moment) -> str:
    return format_hotp_value(hotp_value(SECRET, int(moment.timestamp()) // 30))


def test_a_break_glass_publication_is_sent_once_by_a_real_worker(start_worker, service, approver_user):
    now = timezone.now()
    mfa.enrol(user=approver_user, secret=SECRET, code=_code(now - timedelta(seconds=30)), now=now)
    draft = workflow.create(user=approver_user, service=service, kind=DraftKind.OPEN, fields=FIELDS)
    revision = workflow.submit(draft_id=draft.pk, user=approver_user)
    start_worker()

    decision = workflow.break_glass(
        draft_id=draft.pk,
        revision_id=revision.pk,
        user=approver_user,
        sha256=revision.sha256,
        reason="Nobody else answers; customers cannot pay.",
        totp_code=_code(timezone.now()),
    )

    assert decision.review.decision == ReviewDecision.BREAK_GLASS
    publication = decision.publications[0]
    wait_for(
        lambda: (
            Publication.objects.get(pk=publication.pk).state in (PublicationState.PUBLISHED, PublicationState.FAILED)
        ),
        what="the break-glass publication to settle",
    )
    publication.refresh_from_db()
    assert publication.state == PublicationState.PUBLISHED, publication.last_error
    assert publication.remote_id
    posts = sandbox_requests("POST")
    assert [r.body for r in posts] == [publication.request.body]  # once, the approved bytes
    draft.refresh_from_db()
    assert draft.state == DraftState.PUBLISHED
