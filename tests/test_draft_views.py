"""The draft, review, incident and dashboard pages: as htmx and as plain requests, for every role."""

from __future__ import annotations

import pytest
from django.core import mail
from django.db import transaction

from incidents import notifications, workflow
from incidents.models import (
    AuditEvent,
    Draft,
    DraftKind,
    DraftState,
    Notification,
    Publication,
    PublicationState,
    Review,
)

from .factories import IncidentFactory
from .publishing.factories import approved_publication

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
FIELDS = {"title": "API errors", "severity": "major", "description": "Elevated 5xx.", "stage": "investigating"}


def new_draft_post(service, **overrides):
    return {"service": service.pk, **FIELDS, **overrides}


@pytest.fixture
def draft(responder, api_service):
    return workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)


@pytest.fixture
def in_review(draft, responder):
    workflow.submit(draft_id=draft.pk, user=responder)
    draft.refresh_from_db()
    return draft


def approve_post(revision, **overrides) -> dict:
    """What the review form posts for an approval: the revision and the hash the reviewer was shown."""
    return {"decision": "approve", "revision": revision.pk, "sha256": revision.sha256, **overrides}


# --- The new-incident form ------------------------------------------------------------------------------
def test_new_incident_form_offers_only_my_teams_services(as_user, responder, api_service, pipeline_service):
    response = as_user(responder).get("/drafts/new/")
    assert response.status_code == 200
    body = response.content.decode()
    for label in ("Service", "Title", "Severity", "Description", "Stage"):
        assert f">{label}" in body
    assert "API (#1001)" in body
    assert "Pipeline" not in body
    assert 'value="investigating" selected' in body


def test_auditor_gets_403_naming_the_role_on_a_write(as_user, auditor, api_service):
    client = as_user(auditor)
    response = client.post("/drafts/new/", new_draft_post(api_service, action="save"))
    assert response.status_code == 403
    assert b"responder or approver role" in response.content
    assert not Draft.objects.exists()


def test_plain_post_saves_and_redirects(as_user, responder, api_service):
    response = as_user(responder).post("/drafts/new/", new_draft_post(api_service, action="save"))
    draft = Draft.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/drafts/{draft.pk}/"
    assert draft.title == "API errors"
    assert draft.state == DraftState.DRAFT


def test_htmx_post_submits_and_redirects_the_client(as_user, responder, approver, api_service):
    response = as_user(responder).post("/drafts/new/", new_draft_post(api_service, action="submit"), **HX)
    draft = Draft.objects.get()
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/drafts/{draft.pk}/"
    assert draft.state == DraftState.IN_REVIEW


def test_invalid_post_keeps_the_text_and_shows_errors(as_user, responder, api_service):
    long_title = "x" * 256
    response = as_user(responder).post(
        "/drafts/new/", new_draft_post(api_service, title=long_title, severity="catastrophic", action="save")
    )
    assert response.status_code == 422
    body = response.content.decode()
    assert "at most 255 characters" in body
    assert "Select a valid choice" in body
    assert long_title in body
    assert not Draft.objects.exists()


def test_another_teams_service_is_refused(as_user, responder, pipeline_service):
    response = as_user(responder).post("/drafts/new/", new_draft_post(pipeline_service, action="save"))
    assert response.status_code == 422
    assert b"Select a valid choice" in response.content
    assert not Draft.objects.exists()


def test_live_validation_returns_preview_and_the_fields_errors_out_of_band(as_user, responder, api_service):
    response = as_user(responder).post(
        "/drafts/new/",
        new_draft_post(api_service, title="", action="validate"),
        HTTP_HX_TRIGGER_NAME="title",
        **HX,
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body
    assert 'id="request-preview"' not in body and "To see the exact request" in body  # the preview's body
    assert 'id="id_title_error" hx-swap-oob="true"' in body
    assert "This field is required." in body
    assert 'id="id_severity_error"' not in body  # only the field the user left


def test_preview_shows_the_exact_json_request(as_user, responder, api_service):
    response = as_user(responder).post(
        "/drafts/new/", new_draft_post(api_service, action="validate"), HTTP_HX_TRIGGER_NAME="title", **HX
    )
    body = response.content.decode()
    assert "POST /api/v2/incidents" in body
    assert "&quot;service_id&quot;: 1001" in body
    assert "&quot;resolution_stage&quot;: &quot;investigating&quot;" in body


def test_plain_preview_button_renders_the_whole_page_without_saving(as_user, responder, api_service):
    response = as_user(responder).post("/drafts/new/", new_draft_post(api_service, action="preview"))
    assert response.status_code == 200
    assert b"<html" in response.content
    assert b"POST /api/v2/incidents" in response.content
    assert not Draft.objects.exists()


def test_script_in_text_is_stored_as_typed_and_shown_escaped(as_user, responder, approver, api_service):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    client = as_user(responder)
    client.post("/drafts/new/", new_draft_post(api_service, title=evil, description=evil, action="submit"))
    draft = Draft.objects.get()
    assert draft.title == evil
    for response in (
        client.get(f"/drafts/{draft.pk}/"),
        as_user(approver).get(f"/drafts/{draft.pk}/review/"),
        as_user(approver).get("/"),
        client.post("/drafts/new/", new_draft_post(api_service, title=evil, action="validate"), **HX),
    ):
        assert b"<script>alert" not in response.content
        assert b"<img src=x" not in response.content
        assert b"&lt;script&gt;" in response.content


# --- Existing drafts: save, conflict, withdraw, discard ------------------------------------------------
def test_edit_conflict_keeps_my_text_and_shows_theirs(draft, responder, approver, as_user):
    mine, theirs = as_user(responder), as_user(approver)
    assert (
        theirs.post(
            f"/drafts/{draft.pk}/",
            {**FIELDS, "service": draft.service_id, "title": "Their title", "version": 1, "action": "save"},
        ).status_code
        == 302
    )
    response = mine.post(
        f"/drafts/{draft.pk}/",
        {**FIELDS, "service": draft.service_id, "description": "My careful words", "version": 1, "action": "save"},
    )
    assert response.status_code == 409
    body = response.content.decode()
    assert "approver saved this draft after you opened it" in body
    assert "My careful words" in body  # my text stays in the form
    assert "Their title" in body  # their version is shown
    assert 'name="version" value="2"' in body
    draft.refresh_from_db()
    assert draft.title == "Their title"
    assert draft.description == FIELDS["description"]


def test_edit_conflict_as_htmx_returns_the_panel_with_409(draft, responder, approver, as_user):
    workflow.save(draft_id=draft.pk, user=approver, expected_version=1, fields={**FIELDS, "title": "Theirs"})
    response = as_user(responder).post(
        f"/drafts/{draft.pk}/", {**FIELDS, "service": draft.service_id, "version": 1, "action": "save"}, **HX
    )
    assert response.status_code == 409
    assert b"<html" not in response.content
    assert b'id="draft-panel"' in response.content


def test_post_against_another_teams_draft_is_404(draft, outsider, as_user):
    client = as_user(outsider)
    assert client.get(f"/drafts/{draft.pk}/").status_code == 404
    assert client.post(f"/drafts/{draft.pk}/", {**FIELDS, "version": 1, "action": "save"}).status_code == 404
    assert client.post(f"/drafts/{draft.pk}/", {"action": "discard"}).status_code == 404
    approval = {"decision": "approve", "revision": 1, "sha256": "0" * 64}
    assert client.post(f"/drafts/{draft.pk}/review/", approval).status_code == 404
    draft.refresh_from_db()
    assert draft.state == DraftState.DRAFT


def test_auditor_can_read_a_draft_but_not_change_it(draft, auditor, as_user):
    client = as_user(auditor)
    response = client.get(f"/drafts/{draft.pk}/")
    assert response.status_code == 200
    assert b'id="draft-form"' not in response.content
    assert client.post(f"/drafts/{draft.pk}/", {"action": "discard"}).status_code == 403


def test_editing_during_review_gets_a_clear_message(in_review, responder, as_user):
    response = as_user(responder).post(
        f"/drafts/{in_review.pk}/",
        {**FIELDS, "service": in_review.service_id, "version": in_review.version, "action": "save"},
    )
    assert response.status_code == 422
    assert b"Cannot save: the draft is in review now." in response.content


def test_moving_a_draft_to_another_service_is_refused_next_to_the_field(
    draft, responder, api_service, dashboard_service, as_user
):
    response = as_user(responder).post(
        f"/drafts/{draft.pk}/", {**FIELDS, "service": dashboard_service.pk, "version": 1, "action": "submit"}
    )
    assert response.status_code == 422
    assert (
        '<div id="id_service_error" class="field-errors"><p class="field-error">The service of a draft cannot change'
        in response.content.decode()
    )
    draft.refresh_from_db()
    assert (draft.service_id, draft.version, draft.state) == (api_service.pk, 1, DraftState.DRAFT)


@pytest.mark.parametrize("headers", [{}, HX])
def test_withdraw_and_discard(in_review, responder, as_user, headers):
    client = as_user(responder)
    response = client.post(f"/drafts/{in_review.pk}/", {"action": "withdraw"}, **headers)
    assert response.status_code in (200, 302)
    in_review.refresh_from_db()
    assert in_review.state == DraftState.DRAFT
    client.post(f"/drafts/{in_review.pk}/", {"action": "discard"}, **headers)
    in_review.refresh_from_db()
    assert in_review.state == DraftState.DISCARDED
    # Discarding again: a clear message, no 500.
    response = client.post(f"/drafts/{in_review.pk}/", {"action": "discard"}, follow=True)
    assert response.status_code == 200
    assert b"Cannot discard: the draft is discarded now." in response.content


# --- Review --------------------------------------------------------------------------------------------
def test_review_page_shows_the_request_and_hash(in_review, approver, as_user):
    revision = in_review.revisions.get()
    response = as_user(approver).get(f"/drafts/{in_review.pk}/review/")
    body = response.content.decode()
    assert '<pre class="revision-request" id="revision-request-0">POST /api/v2/incidents\n' in body
    assert "&quot;service_id&quot;: 1001" in body
    assert f'<span class="mono" id="revision-hash">{revision.sha256}</span>' in body
    for label in ("Approve", "Request changes", "Reject"):
        assert f">{label}</button>" in body


def test_review_form_carries_the_revision_and_the_hash_the_reviewer_sees(in_review, approver, as_user):
    revision = in_review.revisions.get()
    body = as_user(approver).get(f"/drafts/{in_review.pk}/review/").content.decode()
    assert f'<input type="hidden" name="revision" value="{revision.pk}">' in body
    assert f'<input type="hidden" name="sha256" value="{revision.sha256}">' in body


@pytest.mark.parametrize("sha256", ["", "0" * 64])
def test_approving_a_hash_other_than_the_revisions_is_refused_with_a_message(
    in_review, approver, as_user, sha256, no_broker
):
    revision = in_review.revisions.get()
    response = as_user(approver).post(
        f"/drafts/{in_review.pk}/review/", approve_post(revision, sha256=sha256), follow=True
    )
    assert response.status_code == 200
    assert b"its SHA-256 differs" in response.content
    in_review.refresh_from_db()
    assert in_review.state == DraftState.IN_REVIEW
    assert not Review.objects.exists()
    assert not Publication.objects.exists()
    assert not AuditEvent.objects.filter(action="review.approved").exists()
    assert no_broker.sent == []


def test_author_who_is_approver_sees_why_and_the_server_refuses(api_service, approver, as_user):
    draft = workflow.create(user=approver, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    revision = workflow.submit(draft_id=draft.pk, user=approver)
    client = as_user(approver)
    response = client.get(f"/drafts/{draft.pk}/review/")
    assert b"you cannot review it" in response.content
    assert b">Approve</button>" not in response.content
    response = client.post(f"/drafts/{draft.pk}/review/", approve_post(revision), follow=True)
    assert b"You cannot approve a draft you wrote or edited" in response.content
    draft.refresh_from_db()
    assert draft.state == DraftState.IN_REVIEW


@pytest.mark.parametrize("headers", [{}, HX])
def test_approve_via_the_page_queues_a_publication_and_tells_the_author(
    in_review, approver, as_user, headers, no_broker, django_capture_on_commit_callbacks
):
    revision = in_review.revisions.get()
    client = as_user(approver)
    # Approve with exactly what the page's form carries.
    page = client.get(f"/drafts/{in_review.pk}/review/").content.decode()
    assert f'name="sha256" value="{revision.sha256}"' in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/drafts/{in_review.pk}/review/", approve_post(revision), **headers)
    assert response.status_code in (200, 302)
    in_review.refresh_from_db()
    assert in_review.state == DraftState.APPROVED
    publication = Publication.objects.get()
    assert publication.revision == revision
    assert Review.objects.get().sha256 == revision.sha256
    told = Notification.objects.get(kind="reviewed")
    assert told.recipients == ["responder@example.com"]
    assert sorted(no_broker.sent) == [("deliver_notification", told.pk), ("publish", publication.pk)]
    notifications.deliver_due()
    [message] = [m for m in mail.outbox if "Approved" in m.subject]
    assert message.to == ["responder@example.com"]
    assert f"/drafts/{in_review.pk}/" in message.body


def test_request_changes_without_comment_is_a_clear_error(in_review, approver, as_user):
    revision = in_review.revisions.get()
    response = as_user(approver).post(
        f"/drafts/{in_review.pk}/review/", {"decision": "request_changes", "revision": revision.pk, "comment": ""}, **HX
    )
    assert response.status_code == 422
    assert b"A comment is required" in response.content
    in_review.refresh_from_db()
    assert in_review.state == DraftState.IN_REVIEW


def test_approving_twice_gets_a_message_not_a_500(in_review, approver, approver2, as_user):
    revision = in_review.revisions.get()
    as_user(approver).post(f"/drafts/{in_review.pk}/review/", approve_post(revision))
    response = as_user(approver2).post(f"/drafts/{in_review.pk}/review/", approve_post(revision), follow=True)
    assert response.status_code == 200
    assert b"Cannot approve: the draft is approved now." in response.content
    assert Publication.objects.count() == 1


def test_responder_cannot_review(in_review, responder, approver2, as_user):
    # approver2 wrote nothing; responder lacks the role entirely.
    revision = in_review.revisions.get()
    response = as_user(responder).post(f"/drafts/{in_review.pk}/review/", approve_post(revision))
    assert response.status_code == 403
    assert b"approver role" in response.content
    assert not Review.objects.exists()


def test_resubmission_shows_a_diff_against_the_previous_revision(in_review, responder, approver, as_user):
    revision = in_review.revisions.get()
    workflow.request_changes(
        draft_id=in_review.pk, revision_id=revision.pk, reviewer=approver, comment="Name the region"
    )
    in_review.refresh_from_db()
    workflow.save(
        draft_id=in_review.pk,
        user=responder,
        expected_version=in_review.version,
        fields={**FIELDS, "description": "Elevated 5xx in eu-west."},
    )
    workflow.submit(draft_id=in_review.pk, user=responder)
    body = as_user(approver).get(f"/drafts/{in_review.pk}/review/").content.decode()
    assert "Changes since revision 1" in body
    assert "<del>5xx.</del><ins>5xx in eu-west.</ins>" in body
    assert "Name the region" in body


def test_update_review_diffs_against_the_incident(responder, approver, api_service, as_user):
    incident = IncidentFactory(service=api_service, remote_id="55001", title="API errors", severity="minor")
    draft = workflow.create(
        user=responder,
        service=api_service,
        kind=DraftKind.UPDATE,
        incident=incident,
        fields={"title": "API errors", "severity": "major", "description": "Worse.", "stage": "identified"},
    )
    workflow.submit(draft_id=draft.pk, user=responder)
    body = as_user(approver).get(f"/drafts/{draft.pk}/review/").content.decode()
    assert "PATCH /api/v2/incidents/55001" in body
    assert "Against the incident as IsDown shows it now" in body
    assert "<del>minor</del><ins>major</ins>" in body


# --- Updates, incidents, dashboard -----------------------------------------------------------------------
def test_update_form_requires_description_and_stage_together(responder, api_service, as_user):
    incident = IncidentFactory(service=api_service, remote_id="55003", title="API errors")
    client = as_user(responder)
    response = client.post(
        f"/incidents/{incident.pk}/update/",
        {
            "title": "API errors",
            "severity": "minor",
            "description": "Text without a stage",
            "stage": "",
            "action": "save",
        },
    )
    assert response.status_code == 422
    assert b"Choose the stage this update announces" in response.content
    response = client.get(f"/incidents/{incident.pk}/update/?resolve=1")
    assert b'value="resolved" selected' in response.content


def test_update_of_an_unpublished_incident_redirects_with_a_message(responder, api_service, as_user):
    incident = IncidentFactory(service=api_service, remote_id=None)
    response = as_user(responder).get(f"/incidents/{incident.pk}/update/", follow=True)
    assert b"not on IsDown yet" in response.content


def test_incident_list_filters_and_search(responder, api_service, dashboard_service, pipeline_service, as_user):
    IncidentFactory(service=api_service, title="Login failures", severity="major")
    IncidentFactory(service=dashboard_service, title="Slow charts", resolved=True, stage="resolved")
    IncidentFactory(service=pipeline_service, title="Other team's incident")
    client = as_user(responder)
    body = client.get("/incidents/").content.decode()
    assert "Login failures" in body and "Slow charts" in body
    assert "Other team" not in body
    assert "Slow charts" not in client.get("/incidents/?status=open").content.decode()
    assert "Login failures" not in client.get("/incidents/?q=chart").content.decode()
    assert "Slow charts" not in client.get("/incidents/?severity=major").content.decode()
    assert "Slow charts" in client.get(f"/incidents/?service={dashboard_service.pk}").content.decode()
    partial = client.get("/incidents/?q=login", **HX)
    assert b"<html" not in partial.content
    assert b"Login failures" in partial.content


def test_incident_list_paginates(responder, api_service, as_user):
    for n in range(30):
        IncidentFactory(service=api_service, title=f"Incident number {n:02d}")
    client = as_user(responder)
    first = client.get("/incidents/").content.decode()
    second = client.get("/incidents/?page=2").content.decode()
    assert "Page 1 of 2" in first
    assert "Incident number 29" in first and "Incident number 00" not in first
    assert "Incident number 00" in second


def test_incident_page_scoped_and_shows_actions_by_role(responder, auditor, outsider, api_service, as_user):
    incident = IncidentFactory(service=api_service, remote_id="55009", title="Visible")
    assert as_user(outsider).get(f"/incidents/{incident.pk}/").status_code == 404
    assert b"Post update" in as_user(responder).get(f"/incidents/{incident.pk}/").content
    assert b"Post update" not in as_user(auditor).get(f"/incidents/{incident.pk}/").content


def test_dashboard_panels_and_review_count(in_review, responder, approver, as_user):
    approver_page = as_user(approver).get("/").content.decode()
    assert "Awaiting my review" in approver_page
    assert f"/drafts/{in_review.pk}/review/" in approver_page
    assert 'id="review-count"' in approver_page
    responder_page = as_user(responder).get("/").content.decode()
    assert f"/drafts/{in_review.pk}/" in responder_page
    assert 'id="review-count"' not in responder_page
    revision = in_review.revisions.get()
    with transaction.atomic():
        workflow.reject(draft_id=in_review.pk, revision_id=revision.pk, reviewer=approver, comment="Duplicate of #12")
    after = as_user(approver).get("/").content.decode()
    assert 'id="review-count"' not in after  # the count follows the action
    assert "Duplicate of #12" in as_user(responder).get("/").content.decode()


def test_every_action_is_audited(in_review, responder, approver, as_user):
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"draft.created", "draft.submitted"} <= actions


def test_draft_page_shows_its_history_to_approvers_and_its_publication(in_review, approver, approver2, as_user):
    revision = in_review.revisions.get()
    workflow.approve(draft_id=in_review.pk, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256)
    body = as_user(approver2).get(f"/drafts/{in_review.pk}/").content.decode()
    assert 'id="history"' in body
    assert "draft.submitted" in body and "review.approved" in body
    publication = Publication.objects.get()
    assert f'id="publication-{publication.pk}"' in body
    assert f'hx-get="/publications/{publication.pk}/"' in body  # polls while queued


def test_submit_emails_the_teams_other_approvers_with_a_link(
    as_user,
    responder,
    approver,
    approver2,
    auditor,
    outsider,
    api_service,
    no_broker,
    settings,
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True):
        as_user(responder).post("/drafts/new/", new_draft_post(api_service, action="submit"))
    draft = Draft.objects.get()
    notification = Notification.objects.get()
    assert notification.kind == "review_needed"
    assert no_broker.sent == [("deliver_notification", notification.pk)]
    assert mail.outbox == []  # the worker sends it, not the request
    assert notifications.deliver_due() == {"sent": 1}
    assert sorted(m.to[0] for m in mail.outbox) == ["approver2@example.com", "approver@example.com"]
    for message in mail.outbox:
        assert "Review needed" in message.subject
        assert f"{settings.SITE_URL}/drafts/{draft.pk}/review/" in message.body


def test_draft_and_incident_pages_show_a_publications_actions_and_who_decides(
    api_service, responder, approver, as_user
):
    duplicated = approved_publication(service=api_service, author=responder)
    Publication.objects.filter(pk=duplicated.pk).update(state=PublicationState.DUPLICATE_DETECTED)
    draft_page = f"/drafts/{duplicated.draft_id}/"
    assert "Delete the duplicate on IsDown" in as_user(approver).get(draft_page).content.decode()
    assert "An approver of Platform must decide" in as_user(responder).get(draft_page).content.decode()

    incident = IncidentFactory(service=api_service, remote_id="4711")
    failed = approved_publication(service=api_service, author=responder, kind=DraftKind.UPDATE, incident=incident)
    Publication.objects.filter(pk=failed.pk).update(state=PublicationState.FAILED)
    body = as_user(responder).get(f"/incidents/{incident.pk}/").content.decode()
    assert "An approver of Platform must decide" in body
    assert "approver@example.com" in body
