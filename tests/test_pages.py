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


def main_of(html: str) -> str:
    start = html.index("<main")
    return html[start : html.index("</main>", start)]


# --- Titles and key sections ---------------------------------------------------------------------------------
LONG_TITLE = "Elevated error rates on the public API for customers in the EU region after the 14:00 deploy"


def test_the_incident_page_has_a_short_title_and_its_history_in_the_body(approver, api_service, as_user):
    incident = Incident.objects.create(service=api_service, remote_id="501", title=LONG_TITLE)
    html = _html(as_user(approver).get(reverse("incidents:incident_detail", args=[incident.pk])))
    title = title_of(html)
    assert title.startswith("Elevated error rates") and f"Incident #{incident.pk}" in title
    assert len(title) <= 90 and LONG_TITLE not in title
    body = main_of(html)
    assert '<section class="panel audit-history" id="history"' in body and "<h2>History</h2>" in body
    assert 'href="#history"' in body


def test_the_review_dashboard_audit_and_publication_pages_say_what_they_are(
    in_review, approver, responder, auditor, api_service, as_user
):
    review = _html(as_user(approver).get(reverse("incidents:draft_review", args=[in_review.pk])))
    assert title_of(review) == f"Review draft #{in_review.pk}: API errors · isdown-admin"
    assert 'id="entry-preview"' in main_of(review) and 'id="decision"' in main_of(review)

    dashboard = _html(as_user(approver).get(reverse("incidents:dashboard")))
    assert title_of(dashboard) == "Dashboard · isdown-admin"
    reviews = main_of(dashboard)[main_of(dashboard).index('id="panel-reviews"') :]
    assert f'href="{reverse("incidents:draft_review", args=[in_review.pk])}"' in reviews

    audit_log = _html(as_user(auditor).get(reverse("incidents:audit_log")))
    assert title_of(audit_log) == "Audit log · isdown-admin"
    assert 'id="audit-filters"' in main_of(audit_log) and 'id="audit-results"' in main_of(audit_log)

    publication = approved_publication(service=api_service, author=responder)
    page = _html(as_user(auditor).get(reverse("incidents:publication_status", args=[publication.pk])))
    assert title_of(page) == f"Publication #{publication.pk}: Queued · isdown-admin"
    assert f'id="publication-{publication.pk}"' in main_of(page)
    assert f'href="{reverse("incidents:draft_detail", args=[publication.draft_id])}"' in main_of(page)


def test_all_of_it_in_the_audit_log_lists_the_incident_drafts_and_publications_events(
    approver, responder, api_service, as_user
):
    incident = Incident.objects.create(service=api_service, remote_id="502", title="Queue backlog")
    draft = workflow.create(
        user=responder, service=api_service, kind=DraftKind.UPDATE, incident=incident, fields=FIELDS
    )
    workflow.submit(draft_id=draft.pk, user=responder)
    other = workflow.create(
        user=responder, service=api_service, kind=DraftKind.OPEN, fields={**FIELDS, "title": "Other"}
    )

    client = as_user(approver)
    page = _html(client.get(reverse("incidents:incident_detail", args=[incident.pk])))
    link = re.search(r'<a href="([^"]+)">All of it in the audit log</a>', page)
    assert link is not None
    log = main_of(_html(client.get(link.group(1).replace("&amp;", "&"))))
    assert "draft.created" in log and "draft.submitted" in log
    assert f"draft #{draft.pk}".lower() in log.lower()
    assert f"Draft #{other.pk}:" not in log


# --- The incident page with many publications (issue 13) ------------------------------------------------------------
def busy_incident(api_service, responder, publications: int):
    from django.utils import timezone

    from incidents.models import AttemptKind, AttemptOutcome, PublishAttempt

    from .publishing.factories import update_publication

    incident = Incident.objects.create(service=api_service, remote_id="777", title="Busy")
    for n in range(publications):
        publication = update_publication(incident=incident, author=responder, description=f"Update {n}.")
        Publication.objects.filter(pk=publication.pk).update(state=PublicationState.PUBLISHED, remote_id="777")
        PublishAttempt.objects.bulk_create(
            PublishAttempt(
                publication=publication,
                number=k + 1,
                kind=AttemptKind.SEND,
                started_at=timezone.now(),
                finished_at=timezone.now(),
                method="PATCH",
                path="/api/v2/incidents/777",
                status_code=503 if k < 2 else 200,
                outcome=AttemptOutcome.RETRY if k < 2 else AttemptOutcome.PUBLISHED,
                error=f"older attempt {n}-{k}" if k < 2 else f"latest attempt {n}",
            )
            for k in range(3)
        )
    return incident


def test_the_incident_page_shows_each_publications_latest_attempt_and_folds_the_older_ones(
    approver, responder, api_service, as_user
):
    incident = busy_incident(api_service, responder, 2)
    html = main_of(_html(as_user(approver).get(reverse("incidents:incident_detail", args=[incident.pk]))))
    for n in range(2):
        latest, older = html.index(f"latest attempt {n}"), html.index(f"older attempt {n}-0")
        folded = html.rindex('<details class="older-attempts"', 0, older)
        assert latest < folded < older  # the latest first, the older ones inside the disclosure
        assert html.index("Show 2 older attempts", folded) < older


def test_the_incident_page_with_many_publications_stays_within_15_queries(
    approver, responder, api_service, as_user, django_assert_max_num_queries
):
    incident = busy_incident(api_service, responder, 12)
    client = as_user(approver)
    url = reverse("incidents:incident_detail", args=[incident.pk])
    client.get(url)  # the session and the user's preferences, as on any page after the first
    with django_assert_max_num_queries(15):
        html = _html(client.get(url))
    # The latest ten are shown whole; the two older (published) ones are behind "Show all" (issue 13 P2).
    assert html.count('class="card publication"') == 10
    assert "2 older publications (published, abandoned or superseded) not shown" in html
    with django_assert_max_num_queries(15):
        html = _html(client.get(url + "?publications=all"))
    assert html.count('class="card publication"') == 12
