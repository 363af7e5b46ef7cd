"""The publication fragment and the three approver actions over HTTP: scoping, roles, CSRF, polling."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from incidents.models import AuditEvent, PublicationState

from .factories import approved_publication, update_publication

S = PublicationState


@pytest.fixture
def publication(api_service, responder):
    return approved_publication(service=api_service, author=responder)


def _set_state(publication, state):
    type(publication).objects.filter(pk=publication.pk).update(state=state)
    publication.refresh_from_db()
    return publication


def test_the_fragment_polls_while_in_progress_and_stops_at_a_final_state(publication, approver, as_user):
    url = reverse("incidents:publication_status", args=[publication.pk])
    client = as_user(approver)

    polling = client.get(url, headers={"HX-Request": "true"})
    assert polling.status_code == 200
    html = polling.content.decode()
    assert 'hx-trigger="every 2s"' in html and f'href="{url}"' in html and "<html" not in html

    _set_state(publication, S.PUBLISHED)
    final = client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert "hx-trigger" not in final and "Published" in final


def test_without_htmx_the_status_is_a_full_page(publication, auditor, as_user):
    response = as_user(auditor).get(reverse("incidents:publication_status", args=[publication.pk]))
    assert response.status_code == 200 and b"<html" in response.content
    assert b"Send again" not in response.content  # auditors read, never act


def test_approvers_see_the_actions_on_a_failed_publication(publication, approver, responder, as_user):
    _set_state(publication, S.FAILED)
    url = reverse("incidents:publication_status", args=[publication.pk])
    assert b"Mark as published" in as_user(approver).get(url).content
    assert b"Mark as published" not in as_user(responder).get(url).content


def test_an_approver_retries_a_failed_publication(publication, approver, as_user, django_capture_on_commit_callbacks):
    _set_state(publication, S.FAILED)
    with django_capture_on_commit_callbacks() as callbacks:
        response = as_user(approver).post(
            reverse("incidents:publication_retry", args=[publication.pk]), {"state": "failed"}
        )
    assert response.status_code == 302
    publication.refresh_from_db()
    assert publication.state == S.QUEUED and len(callbacks) == 1
    assert AuditEvent.objects.filter(action="publication.retry_requested", actor_id=approver.pk).exists()


def test_an_action_on_a_state_that_moved_on_answers_409_with_the_fragment(publication, approver, as_user):
    _set_state(publication, S.FAILED)
    url = reverse("incidents:publication_send_again", args=[publication.pk])
    response = as_user(approver).post(url, {"state": "needs_attention"}, headers={"HX-Request": "true"})
    assert response.status_code == 409
    assert "the action was not applied" in response.content.decode()
    publication.refresh_from_db()
    assert publication.state == S.FAILED


def test_a_responder_gets_403_and_another_team_404(publication, responder, outsider, as_user):
    _set_state(publication, S.FAILED)
    url = reverse("incidents:publication_send_again", args=[publication.pk])
    assert as_user(responder).post(url).status_code == 403
    assert as_user(outsider).post(url).status_code == 404
    assert as_user(outsider).get(reverse("incidents:publication_status", args=[publication.pk])).status_code == 404
    publication.refresh_from_db()
    assert publication.state == S.FAILED


def test_actions_need_post_and_a_csrf_token(publication, approver):
    _set_state(publication, S.FAILED)
    client = Client(enforce_csrf_checks=True)
    client.force_login(approver)
    url = reverse("incidents:publication_retry", args=[publication.pk])
    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 403
    publication.refresh_from_db()
    assert publication.state == S.FAILED


def test_mark_published_rejects_a_malformed_id_with_422(publication, approver, as_user):
    _set_state(publication, S.NEEDS_ATTENTION)
    url = reverse("incidents:publication_mark_published", args=[publication.pk])
    response = as_user(approver).post(url, {"remote_id": "abc"}, headers={"HX-Request": "true"})
    assert response.status_code == 422 and "is a number" in response.content.decode()


def _poll(client, publication, page_url):
    return client.get(
        reverse("incidents:publication_status", args=[publication.pk]),
        headers={"HX-Request": "true", "HX-Current-URL": f"http://testserver{page_url}"},
    ).content.decode()


def test_the_poll_refreshes_the_draft_badge_and_history_when_the_publication_settles(publication, approver, as_user):
    from incidents import audit
    from incidents.models import Draft, DraftState

    page = reverse("incidents:draft_detail", args=[publication.draft_id])
    client = as_user(approver)
    assert 'id="draft-state" hx-swap-oob="true">Approved<' in _poll(client, publication, page)

    Draft.objects.filter(pk=publication.draft_id).update(state=DraftState.PUBLISHED)
    _set_state(publication, S.PUBLISHED)
    audit.record(
        "publication.published", summary="Published on IsDown as #77", team=publication.team, target=publication
    )
    html = _poll(client, publication, page)
    assert "hx-trigger" not in html  # the last poll
    assert 'id="draft-state" hx-swap-oob="true">Published<' in html
    history = html[html.index('id="history"') :]
    assert 'hx-swap-oob="true"' in history[:200] and "Published on IsDown as #77" in history


def test_the_poll_refreshes_the_incident_header_and_history(api_service, responder, approver, as_user):
    from incidents.models import Incident

    incident = Incident.objects.create(service=api_service, remote_id="880", title="Slow", stage="investigating")
    publication = update_publication(incident=incident, author=responder)
    Incident.objects.filter(pk=incident.pk).update(stage="identified")
    html = _poll(as_user(approver), publication, reverse("incidents:incident_detail", args=[incident.pk]))
    header = html[html.index('id="incident-state"') :]
    assert header.startswith('id="incident-state" hx-swap-oob="true">') and "Identified" in header[:400]
    assert 'id="history" aria-label="History" hx-swap-oob="true"' in html


def test_the_poll_adds_nothing_for_another_page(publication, approver, as_user):
    html = _poll(as_user(approver), publication, reverse("incidents:dashboard"))
    assert "hx-swap-oob" not in html
