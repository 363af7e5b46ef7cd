"""A publication IsDown refused for good (a 4xx) is edited and resubmitted, never retried; whoever cannot act
on a publication that needs a human is told who can, and what to ask for."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from incidents import publishing, workflow
from incidents.models import (
    AttemptKind,
    AttemptOutcome,
    AuditEvent,
    Draft,
    DraftState,
    Incident,
    Publication,
    PublicationState,
    PublishAttempt,
)

from .factories import update_publication

S = PublicationState


def _failed(publication: Publication, *, outcome: str = AttemptOutcome.REJECTED, status: int = 422) -> Publication:
    """The publication as _record_send leaves it after IsDown answered ``status`` (its draft following it)."""
    PublishAttempt.objects.create(
        publication=publication,
        number=1,
        kind=AttemptKind.SEND,
        started_at=timezone.now(),
        finished_at=timezone.now(),
        method=publication.request.method,
        path=publication.request.path,
        status_code=status,
        outcome=outcome,
    )
    Publication.objects.filter(pk=publication.pk).update(
        state=S.FAILED, attempts=1, first_sent_at=timezone.now(), last_error="IsDown refused the request: title"
    )
    Draft.objects.filter(pk=publication.draft_id).update(state=DraftState.FAILED)
    publication.refresh_from_db()
    return publication


@pytest.fixture
def incident(api_service):
    return Incident.objects.create(service=api_service, remote_id="4242", title="Elevated API errors")


@pytest.fixture
def refused(incident, responder):
    return _failed(update_publication(incident=incident, author=responder))


def _status_page(client, publication):
    return client.get(reverse("incidents:publication_status", args=[publication.pk])).content.decode()


def test_a_refused_publication_offers_edit_and_resubmit_instead_of_retry(refused, approver, responder, as_user):
    for user in (approver, responder):
        html = _status_page(as_user(user), refused)
        assert "Edit and resubmit" in html
        assert "Retry now" not in html and "Send again" not in html


def test_a_publication_that_ran_out_of_attempts_can_still_be_retried(incident, responder, approver, as_user):
    publication = _failed(update_publication(incident=incident, author=responder), outcome=AttemptOutcome.RETRY)
    html = _status_page(as_user(approver), publication)
    assert "Retry now" in html and "Edit and resubmit" not in html


def test_retrying_a_refused_publication_is_refused(refused, approver):
    with pytest.raises(publishing.InvalidTransition):
        publishing.retry_now(publication_id=refused.pk, user=approver)
    refused.refresh_from_db()
    assert refused.state == S.FAILED


def test_edit_and_resubmit_supersedes_it_reopens_the_draft_and_releases_the_queue(
    refused, incident, responder, approver2, as_user, no_broker, django_capture_on_commit_callbacks
):
    behind = update_publication(incident=incident, author=responder, description="Still investigating.")
    with django_capture_on_commit_callbacks(execute=True):
        response = as_user(responder).post(
            reverse("incidents:publication_edit_and_resubmit", args=[refused.pk]), {"state": "failed"}
        )

    assert response.status_code == 302
    assert response["Location"] == reverse("incidents:draft_detail", args=[refused.draft_id])
    refused.refresh_from_db()
    draft = Draft.objects.get(pk=refused.draft_id)
    assert refused.state == S.SUPERSEDED and "title" in refused.last_error
    assert draft.state == DraftState.DRAFT
    actions = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
    assert actions[-2:] == ["draft.reopened", "publication.superseded"]
    assert any(pk == behind.pk for _, pk in no_broker.sent)  # the one held behind it goes on

    # The fixed draft goes back to review as a new revision, and follows its own publication once approved.
    revision = workflow.submit(draft_id=draft.pk, user=responder)
    assert revision.number == 2
    workflow.approve(draft_id=draft.pk, revision_id=revision.pk, reviewer=approver2, sha256=revision.sha256)
    draft.refresh_from_db()
    assert draft.state == DraftState.APPROVED
    assert draft.publications.filter(state=S.QUEUED, revision=revision).exists()


def test_edit_and_resubmit_is_refused_when_a_retry_could_succeed(incident, responder):
    publication = _failed(update_publication(incident=incident, author=responder), outcome=AttemptOutcome.RETRY)
    with pytest.raises(publishing.InvalidTransition):
        publishing.edit_and_resubmit(publication_id=publication.pk, user=responder)
    assert Draft.objects.get(pk=publication.draft_id).state == DraftState.FAILED


def test_the_remote_id_field_has_a_plain_hint_not_a_placeholder(refused, approver, as_user):
    html = _status_page(as_user(approver), refused)
    assert 'name="remote_id"' in html and "placeholder" not in html
    assert f'aria-describedby="remote-id-hint-{refused.pk}"' in html


def test_a_responder_is_told_which_approvers_can_act_and_what_to_ask_for(incident, responder, approver, as_user):
    stuck = update_publication(incident=incident, author=responder)
    Publication.objects.filter(pk=stuck.pk).update(state=S.NEEDS_ATTENTION, last_error="Ambiguous")
    html = _status_page(as_user(responder), stuck)
    assert "Send again" not in html
    assert approver.get_username() in html or approver.get_full_name() in html
    assert f'href="mailto:{approver.email}"' in html
    assert "Ask them to check IsDown again" in html


def test_a_responder_waiting_behind_a_held_publication_is_told_who_can_release_it(
    refused, incident, responder, approver, as_user
):
    behind = update_publication(incident=incident, author=responder, description="Still investigating.")
    html = _status_page(as_user(responder), behind)
    assert f'href="mailto:{approver.email}"' in html
    assert f"Ask them to retry or abandon publication #{refused.pk}" in html


def test_the_draft_and_incident_pages_offer_edit_and_resubmit_too(refused, incident, responder, as_user):
    client = as_user(responder)
    for url in (
        reverse("incidents:draft_detail", args=[refused.draft_id]),
        reverse("incidents:incident_detail", args=[incident.pk]),
    ):
        Publication.objects.filter(pk=refused.pk).update(incident=incident)
        html = client.get(url).content.decode()
        assert "Edit and resubmit" in html and "Retry now" not in html, url
