"""The public-text lint where people see it (the draft form while typing, the review page), accepting a warning
(approvers who may review, audited with rule and span), and corrections of the last update."""

from __future__ import annotations

import pytest
from django.test import Client
from django.utils import timezone

from incidents import workflow
from incidents.models import AcceptedWarning, AuditEvent, Draft, DraftKind, IncidentUpdate

from .factories import IncidentFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
LEAKY = {
    "title": "API errors",
    "severity": "major",
    "description": "Primary 10.0.0.5 failed <b>now</b>; mail ops@example.com",
    "stage": "investigating",
}


@pytest.fixture
def leaky_in_review(responder, api_service) -> Draft:
    draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=LEAKY)
    workflow.submit(draft_id=draft.pk, user=responder)
    draft.refresh_from_db()
    return draft


def accept_post(draft, rule="private-ip", field="description", text="10.0.0.5") -> dict:
    start = LEAKY[field].index(text)
    return {
        "revision_id": draft.revisions.get().pk,
        "rule": rule,
        "field": field,
        "start": start,
        "end": start + len(text),
    }


# --- The draft form ---------------------------------------------------------------------------------------------
def test_validation_while_typing_warns_and_highlights_the_span_escaped(as_user, responder, api_service):
    data = {"service": api_service.pk, **LEAKY, "action": "validate"}
    response = as_user(responder).post("/drafts/new/", data, **HX)
    assert response.status_code == 200
    body = response.content.decode()
    assert 'data-rule="private-ip"' in body
    assert 'data-rule="email-address"' in body
    assert "<mark>10.0.0.5</mark>" in body
    assert "<mark>ops@example.com</mark>" in body
    # The typed markup is text, never markup, inside the highlighted copy.
    assert "&lt;b&gt;now&lt;/b&gt;" in body
    assert "<b>now</b>" not in body


def test_clean_text_gets_no_warning_block(as_user, responder, api_service):
    data = {"service": api_service.pk, **LEAKY, "description": "Some requests fail.", "action": "validate"}
    body = as_user(responder).post("/drafts/new/", data, **HX).content.decode()
    assert 'id="lint-warnings"' not in body


def test_warnings_never_block_a_submit(as_user, responder, api_service):
    response = as_user(responder).post("/drafts/new/", {"service": api_service.pk, **LEAKY, "action": "submit"})
    assert response.status_code == 302
    assert Draft.objects.get().state == "in_review"


def test_an_empty_resolve_text_is_warned_about_on_the_form(as_user, responder, api_service):
    incident = IncidentFactory(service=api_service, remote_id="5")
    data = {"title": incident.title, "severity": incident.severity, "description": "test", "stage": "resolved"}
    body = as_user(responder).post(f"/incidents/{incident.pk}/update/?resolve=1", {**data, "action": "validate"}, **HX)
    assert 'data-rule="resolve-text"' in body.content.decode()


# --- The review page ----------------------------------------------------------------------------------------------
def test_review_page_shows_warnings_with_accept_buttons_for_an_approver(as_user, approver, leaky_in_review):
    body = as_user(approver).get(f"/drafts/{leaky_in_review.pk}/review/").content.decode()
    assert "<mark>10.0.0.5</mark>" in body
    assert f'action="/drafts/{leaky_in_review.pk}/review/accept-warning/"' in body
    assert body.count('name="rule"') == 2


def test_the_author_sees_the_warnings_but_cannot_accept_them(as_user, responder, leaky_in_review):
    client = as_user(responder)
    body = client.get(f"/drafts/{leaky_in_review.pk}/review/").content.decode()
    assert 'data-rule="private-ip"' in body
    assert "accept-warning" not in body
    response = client.post(f"/drafts/{leaky_in_review.pk}/review/accept-warning/", accept_post(leaky_in_review))
    assert response.status_code == 403
    assert not AcceptedWarning.objects.exists()


def test_an_approver_accepts_a_warning_and_the_audit_log_names_rule_and_span(as_user, approver, leaky_in_review):
    client = as_user(approver)
    response = client.post(f"/drafts/{leaky_in_review.pk}/review/accept-warning/", accept_post(leaky_in_review))
    assert response.status_code == 302
    accepted = AcceptedWarning.objects.get()
    assert (accepted.rule, accepted.field, accepted.text, accepted.accepted_by) == (
        "private-ip",
        "description",
        "10.0.0.5",
        approver,
    )
    event = AuditEvent.objects.get(action="review.warning_accepted")
    start = LEAKY["description"].index("10.0.0.5")
    assert event.changes["rule"] == [None, "private-ip"]
    assert event.changes["span"] == [None, [start, start + 8]]
    assert event.changes["text"] == [None, "10.0.0.5"]
    assert event.target_id == str(leaky_in_review.pk)
    body = client.get(f"/drafts/{leaky_in_review.pk}/review/").content.decode()
    assert body.count(">Accepted</span>") == 1
    assert f"by {approver.username}" in body
    assert body.count('name="rule"') == 1  # the other warning can still be accepted


def test_an_approver_who_edited_the_draft_cannot_accept_its_warnings(as_user, approver, approver2, api_service):
    draft = workflow.create(user=approver, service=api_service, kind=DraftKind.OPEN, fields=LEAKY)
    workflow.submit(draft_id=draft.pk, user=approver)
    client = as_user(approver)
    assert "accept-warning" not in client.get(f"/drafts/{draft.pk}/review/").content.decode()
    response = client.post(f"/drafts/{draft.pk}/review/accept-warning/", accept_post(draft), follow=True)
    assert "someone else must judge" in response.content.decode()
    assert not AcceptedWarning.objects.exists()
    # The other approver may.
    as_user(approver2).post(f"/drafts/{draft.pk}/review/accept-warning/", accept_post(draft))
    assert AcceptedWarning.objects.get().accepted_by == approver2


def test_accepting_twice_is_refused_and_recorded_once(as_user, approver, leaky_in_review):
    client = as_user(approver)
    client.post(f"/drafts/{leaky_in_review.pk}/review/accept-warning/", accept_post(leaky_in_review))
    response = client.post(
        f"/drafts/{leaky_in_review.pk}/review/accept-warning/", accept_post(leaky_in_review), follow=True
    )
    assert "already accepted" in response.content.decode()
    assert AuditEvent.objects.filter(action="review.warning_accepted").count() == 1


def test_a_warning_the_lint_does_not_give_cannot_be_accepted(as_user, approver, leaky_in_review):
    data = {**accept_post(leaky_in_review), "rule": "secret"}
    response = as_user(approver).post(f"/drafts/{leaky_in_review.pk}/review/accept-warning/", data, follow=True)
    assert "not on this revision" in response.content.decode()
    assert not AcceptedWarning.objects.exists()


def test_a_stale_revision_cannot_have_warnings_accepted(as_user, approver, responder, leaky_in_review):
    data = accept_post(leaky_in_review)
    workflow.withdraw(draft_id=leaky_in_review.pk, user=responder)
    response = as_user(approver).post(f"/drafts/{leaky_in_review.pk}/review/accept-warning/", data, follow=True)
    assert "no longer the one in review" in response.content.decode()
    assert not AcceptedWarning.objects.exists()


def test_accepting_needs_csrf(approver, leaky_in_review):
    client = Client(enforce_csrf_checks=True)
    client.force_login(approver)
    response = client.post(f"/drafts/{leaky_in_review.pk}/review/accept-warning/", accept_post(leaky_in_review))
    assert response.status_code == 403
    assert not AcceptedWarning.objects.exists()


def test_another_team_cannot_accept(as_user, outsider, leaky_in_review):
    response = as_user(outsider).post(
        f"/drafts/{leaky_in_review.pk}/review/accept-warning/", accept_post(leaky_in_review)
    )
    assert response.status_code == 404


# --- Corrections --------------------------------------------------------------------------------------------------
@pytest.fixture
def incident_with_updates(api_service):
    incident = IncidentFactory(service=api_service, remote_id="900", title="Slow API", stage="identified")
    now = timezone.now()
    IncidentUpdate.objects.create(
        incident=incident, position=0, stage="investigating", description="Looking.", remote_created_at=now
    )
    IncidentUpdate.objects.create(
        incident=incident, position=1, stage="identified", description="A bad deploy at 09:00.", remote_created_at=now
    )
    return incident


def test_correct_the_last_update_prefills_its_stage_and_text(as_user, responder, incident_with_updates):
    client = as_user(responder)
    page = client.get(f"/incidents/{incident_with_updates.pk}/").content.decode()
    assert f'href="/incidents/{incident_with_updates.pk}/update/?correct=1"' in page
    body = client.get(f"/incidents/{incident_with_updates.pk}/update/?correct=1").content.decode()
    assert "Correction: A bad deploy at 09:00.</textarea>" in body
    assert 'value="identified" selected' in body
    assert 'name="corrects_position" value="1"' in body
    assert 'id="correction-note"' in body


def test_a_correction_is_saved_marked_reviewed_like_any_other_and_shown(
    as_user, responder, approver, incident_with_updates
):
    data = {
        "title": "Slow API",
        "severity": incident_with_updates.severity,
        "stage": "identified",
        "description": "Correction: a bad deploy at 10:00.",
        "corrects_position": "1",
        "action": "submit",
    }
    response = as_user(responder).post(f"/incidents/{incident_with_updates.pk}/update/?correct=1", data)
    assert response.status_code == 302
    draft = Draft.objects.get()
    assert draft.corrects_position == 1
    assert draft.state == "in_review"
    assert draft.revisions.get().fields["description"] == "Correction: a bad deploy at 10:00."
    event = AuditEvent.objects.get(action="draft.created")
    assert event.changes["corrects_position"] == [None, 1]
    # Positions count from 0; people count updates from 1.
    review = as_user(approver).get(f"/drafts/{draft.pk}/review/").content.decode()
    assert "Correction of update 2" in review
    timeline = as_user(approver).get(f"/incidents/{incident_with_updates.pk}/").content.decode()
    assert "Correction of update 2" in timeline
    assert f'Corrected by <a href="/drafts/{draft.pk}/">draft #{draft.pk}</a>' in timeline


def test_a_correction_of_the_first_update_is_marked_too(as_user, responder, api_service):
    incident = IncidentFactory(service=api_service, remote_id="902", title="Slow API", stage="investigating")
    IncidentUpdate.objects.create(
        incident=incident, position=0, stage="investigating", description="Looking.", remote_created_at=timezone.now()
    )
    client = as_user(responder)
    body = client.get(f"/incidents/{incident.pk}/update/?correct=1").content.decode()
    assert 'name="corrects_position" value="0"' in body
    assert "Correction</strong> of update 1" in body
    data = {
        "title": "Slow API",
        "severity": incident.severity,
        "stage": "investigating",
        "description": "Correction: looking at the database.",
        "corrects_position": "0",
        "action": "save",
    }
    client.post(f"/incidents/{incident.pk}/update/?correct=1", data)
    assert Draft.objects.get().corrects_position == 0


def test_the_responder_may_remove_the_correction_prefix(as_user, responder, incident_with_updates):
    data = {
        "title": "Slow API",
        "severity": incident_with_updates.severity,
        "stage": "identified",
        "description": "A bad deploy at 10:00.",
        "corrects_position": "1",
        "action": "save",
    }
    as_user(responder).post(f"/incidents/{incident_with_updates.pk}/update/?correct=1", data)
    draft = Draft.objects.get()
    assert (draft.corrects_position, draft.description) == (1, "A bad deploy at 10:00.")


def test_a_correction_of_an_update_that_does_not_exist_is_refused(as_user, responder, incident_with_updates):
    data = {
        "title": "Slow API",
        "severity": incident_with_updates.severity,
        "stage": "identified",
        "description": "Correction: x",
        "corrects_position": "7",
        "action": "save",
    }
    response = as_user(responder).post(f"/incidents/{incident_with_updates.pk}/update/?correct=1", data)
    assert response.status_code == 422
    assert "no such update" in response.content.decode()
    assert not Draft.objects.exists()


def test_an_ordinary_update_ignores_a_posted_correction_field(as_user, responder, incident_with_updates):
    data = {
        "title": "Slow API",
        "severity": incident_with_updates.severity,
        "stage": "identified",
        "description": "More news.",
        "corrects_position": "1",
        "action": "save",
    }
    as_user(responder).post(f"/incidents/{incident_with_updates.pk}/update/", data)
    assert Draft.objects.get().corrects_position is None


def test_nothing_to_correct_without_an_update(as_user, responder, api_service):
    incident = IncidentFactory(service=api_service, remote_id="901")
    client = as_user(responder)
    assert "Correct the last update" not in client.get(f"/incidents/{incident.pk}/").content.decode()
    response = client.get(f"/incidents/{incident.pk}/update/?correct=1", follow=True)
    assert "nothing to correct" in response.content.decode()
    assert not Draft.objects.exists()
