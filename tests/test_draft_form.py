"""The draft form as a tired responder meets it: defaults, limits, errors that say where, who can approve."""

from __future__ import annotations

import re

import pytest
from django.utils.html import escape

from incidents import workflow
from incidents.models import DraftKind

from .factories import IncidentFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
FIELDS = {"title": "API errors", "severity": "major", "description": "Elevated 5xx.", "stage": "investigating"}


def _tag(body: str, element_id: str) -> str:
    match = re.search(rf'<(?:input|textarea|select)[^>]*id="{element_id}"[^>]*>', body)
    assert match, f"no field {element_id}"
    return match.group(0)


# --- Item 2: the update and resolve forms -------------------------------------------------------------------
def test_update_form_starts_at_the_incidents_current_stage(responder, api_service, as_user):
    incident = IncidentFactory(service=api_service, remote_id="55010", title="API errors", stage="identified")
    body = as_user(responder).get(f"/incidents/{incident.pk}/update/").content.decode()
    assert 'value="identified" selected' in body


def test_update_preview_names_the_field_to_fix_and_shows_its_error(responder, api_service, as_user):
    incident = IncidentFactory(service=api_service, remote_id="55011", title="API errors")
    response = as_user(responder).post(
        f"/incidents/{incident.pk}/update/",
        {"title": "API errors", "severity": "minor", "description": "Still failing", "stage": "", "action": "validate"},
        HTTP_HX_TRIGGER_NAME="description",
        **HX,
    )
    body = response.content.decode()
    preview = body.split("hx-swap-oob")[0]  # the preview comes first, the out-of-band errors after it
    assert "Fix the highlighted fields" not in preview
    assert 'href="#id_stage"' in preview
    assert "Choose the stage this update announces" in preview
    # The stage's error is shown next to the stage too, though the description triggered the check.
    assert 'id="id_stage_error" hx-swap-oob="true"' in body


def test_resolve_has_its_own_title_and_a_default_text(responder, api_service, as_user):
    incident = IncidentFactory(service=api_service, remote_id="55012", title="API errors")
    body = as_user(responder).get(f"/incidents/{incident.pk}/update/?resolve=1").content.decode()
    assert "<h1>Resolve incident</h1>" in body
    assert "This incident has been resolved." in body
    assert 'value="resolved" selected' in body


# --- Item 3: lengths are refused, never cut --------------------------------------------------------------------
def test_title_and_description_are_never_cut_by_the_browser(responder, api_service, as_user):
    body = as_user(responder).get("/drafts/new/").content.decode()
    assert "maxlength" not in _tag(body, "id_title")
    assert "maxlength" not in _tag(body, "id_description")


def test_over_long_title_is_refused_with_its_length(responder, api_service, as_user):
    response = as_user(responder).post(
        "/drafts/new/", {"service": api_service.pk, **FIELDS, "title": "x" * 300, "action": "save"}
    )
    assert response.status_code == 422
    assert "Ensure this value has at most 255 characters (it has 300)." in response.content.decode()


# --- Item 4: plain text or markdown, said and previewed ----------------------------------------------------------
def test_form_says_the_description_is_plain_text_and_preview_keeps_markup_literal(responder, api_service, as_user):
    client = as_user(responder)
    assert "Shown as plain text on the status page" in client.get("/drafts/new/").content.decode()
    response = client.post(
        "/drafts/new/",
        {"service": api_service.pk, **FIELDS, "description": "**bold**\nnext", "action": "validate"},
        HTTP_HX_TRIGGER_NAME="description",
        **HX,
    )
    body = response.content.decode()
    assert "**bold**<br>next" in body
    assert "<strong>bold</strong>" not in body


def test_with_isdown_markdown_the_form_says_so_and_the_preview_renders_it_sanitised(
    responder, api_service, as_user, settings
):
    settings.ISDOWN_MARKDOWN = True
    client = as_user(responder)
    assert "Markdown is rendered on the status page" in client.get("/drafts/new/").content.decode()
    description = '**bold**\n\n- one\n- two\n\n<script>alert(1)</script> [x](javascript:alert(1)) <b onclick="y">z</b>'
    response = client.post(
        "/drafts/new/",
        {"service": api_service.pk, **FIELDS, "description": description, "action": "validate"},
        HTTP_HX_TRIGGER_NAME="description",
        **HX,
    )
    preview = response.content.decode().split('class="status-text"', 1)[1].split("</div>", 1)[0]
    assert "<strong>bold</strong>" in preview and "<li>one</li>" in preview
    assert "<script" not in preview and "javascript:" not in preview and "onclick" not in preview
    # What is sent is what was typed: the setting changes how it is shown, never the request.
    request_preview = response.content.decode().split('id="request-preview"', 1)[1]
    assert escape("**bold**\\n\\n- one") in request_preview and escape("<script>alert(1)</script>") in request_preview


# --- Item 5: focus and errors --------------------------------------------------------------------------------
def test_new_draft_focuses_its_first_field(responder, api_service, dashboard_service, as_user):
    body = as_user(responder).get("/drafts/new/").content.decode()
    assert "autofocus" in _tag(body, "id_service")
    assert "autofocus" not in _tag(body, "id_title")


def test_failed_save_shows_a_summary_linking_each_wrong_field(responder, api_service, as_user):
    response = as_user(responder).post(
        "/drafts/new/", {"service": api_service.pk, **FIELDS, "title": "", "severity": "nope", "action": "save"}, **HX
    )
    assert response.status_code == 422
    body = response.content.decode()
    summary = re.search(r'<div[^>]*id="error-summary"[^>]*>.*?</div>', body, re.S)
    assert summary, "an error summary"
    assert 'role="alert"' in summary.group(0)
    assert "2 problems" in summary.group(0)
    assert 'href="#id_title"' in summary.group(0)
    assert 'href="#id_severity"' in summary.group(0)


def test_every_aria_describedby_points_at_an_element_on_the_page(responder, api_service, as_user):
    response = as_user(responder).post(
        "/drafts/new/", {"service": api_service.pk, **FIELDS, "title": "", "action": "save"}
    )
    body = response.content.decode()
    pointers = [ref for value in re.findall(r'aria-describedby="([^"]+)"', body) for ref in value.split()]
    assert "id_title_error" in pointers
    for ref in pointers:
        assert f'id="{ref}"' in body, f"aria-describedby points at missing #{ref}"


def test_live_region_of_the_preview_is_not_replaced_by_validation(responder, api_service, as_user):
    client = as_user(responder)
    page = client.get("/drafts/new/").content.decode()
    title = _tag(page, "id_title")
    assert 'hx-target="#preview-body"' in title
    assert 'hx-swap="innerHTML"' in title
    assert re.search(r'<div id="preview"[^>]*aria-live="polite"', page)


# --- Item 1: one request in flight per form ---------------------------------------------------------------------
def test_fields_share_one_request_queue_and_buttons_win(responder, api_service, as_user):
    body = as_user(responder).get("/drafts/new/").content.decode()
    assert 'hx-sync="closest form:replace"' in _tag(body, "id_title")
    form = re.search(r'<form[^>]*id="draft-form"[^>]*>', body).group(0)
    assert 'hx-sync="this:replace"' in form
    assert re.search(r'hx-disabled-elt="[^"]*button', form)


# --- Item 7: locked drafts and who can approve ---------------------------------------------------------------
def test_locked_draft_has_no_empty_preview_panel(responder, api_service, as_user):
    draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    workflow.submit(draft_id=draft.pk, user=responder)
    body = as_user(responder).get(f"/drafts/{draft.pk}/").content.decode()
    assert 'id="preview"' not in body


def test_submit_area_names_who_can_approve(responder, approver, approver2, api_service, as_user):
    draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    body = as_user(approver).get(f"/drafts/{draft.pk}/").content.decode()
    who = re.search(r'<p[^>]*id="who-approves"[^>]*>.*?</p>', body, re.S)
    assert who, "the submit area says who can approve"
    # approver would become an editor by submitting; the responder wrote it: only approver2 is left.
    assert "approver2" in who.group(0)
    assert ">approver<" not in who.group(0) and "approver," not in who.group(0)


def test_submit_area_says_plainly_when_nobody_can_approve(responder, approver, api_service, as_user):
    draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    body = as_user(approver).get(f"/drafts/{draft.pk}/").content.decode()
    who = re.search(r'<p[^>]*id="who-approves"[^>]*>.*?</p>', body, re.S)
    assert who
    assert "Nobody else in Platform can approve" in who.group(0)
