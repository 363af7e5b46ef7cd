"""The main pages as an on-call reader meets them: titles, the sections that matter, where actions land."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from incidents import workflow
from incidents.models import DraftKind, Incident, Publication, PublicationState

from .publishing.factories import approved_publication

pytestmark = pytest.mark.django_db

FIELDS = {
    "title": "API errors",
    "severity": "major",
    "description": "Elevated 5xx.\n\nWe are rolling back.",
    "stage": "investigating",
}


@pytest.fixture
def in_review(responder, api_service):
    draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    workflow.submit(draft_id=draft.pk, user=responder)
    draft.refresh_from_db()
    return draft


def _html(response) -> str:
    assert response.status_code == 200
    return response.content.decode()


# --- Review -------------------------------------------------------------------------------------------------
def test_review_shows_the_entry_as_the_status_page_reads_it_before_the_exact_request(in_review, approver, as_user):
    html = _html(as_user(approver).get(reverse("incidents:draft_review", args=[in_review.pk])))
    preview = html.index('id="entry-preview"')
    details = html.index('<details class="exact-request">')
    assert preview < details < html.index('id="revision-request-0"')
    entry = html[preview:details]
    assert "API errors" in entry and "Major" in entry and "Investigating" in entry
    # The description reads as text, its paragraphs kept; no JSON escaping.
    assert "<p>Elevated 5xx.</p>" in entry and "<p>We are rolling back.</p>" in entry and "\\n" not in entry


def test_review_of_a_published_revision_links_the_incident_and_the_public_page(
    approver, responder, api_service, as_user, settings
):
    settings.SANDBOX_ENABLED = True
    settings.PUBLISHES_TO_SANDBOX = True
    publication = approved_publication(service=api_service, author=responder)
    incident = Incident.objects.create(service=api_service, remote_id="9001", title="Elevated API errors")
    Publication.objects.filter(pk=publication.pk).update(state=PublicationState.PUBLISHED, incident=incident)
    html = _html(as_user(approver).get(reverse("incidents:draft_review", args=[publication.draft_id])))
    links = html[html.index('id="published-links"') :]
    assert f'href="{reverse("incidents:incident_detail", args=[incident.pk])}"' in links
    assert f'href="{reverse("sandbox:status", args=[api_service.isdown_service_id])}"' in links

    # An address IsDown gave the incident wins; one that is not http(s) is never a link.
    Incident.objects.filter(pk=incident.pk).update(
        remote_payload={"attributes": {"url": "javascript:alert(1)", "service_status_url": "https://status.example/"}}
    )
    html = _html(as_user(approver).get(reverse("incidents:draft_review", args=[publication.draft_id])))
    assert 'href="https://status.example/"' in html and "javascript:" not in html


# --- Request changes -----------------------------------------------------------------------------------------
def test_after_requesting_changes_the_approver_is_back_at_the_review_queue(in_review, approver, as_user):
    revision = in_review.revisions.get()
    response = as_user(approver).post(
        reverse("incidents:draft_review", args=[in_review.pk]),
        {"decision": "request_changes", "revision": revision.pk, "sha256": revision.sha256, "comment": "Say when."},
        follow=True,
    )
    assert response.redirect_chain[-1][0] == reverse("incidents:dashboard") + "#panel-reviews"
    html = _html(response)
    assert f"Changes requested on draft #{in_review.pk}" in html
    assert 'id="panel-reviews"' in html


def title_of(html: str) -> str:
    match = re.search(r"<title>(.*?)</title>", html, re.S)
    assert match is not None
    return match.group(1).strip()
