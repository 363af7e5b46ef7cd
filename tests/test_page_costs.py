"""What the busiest pages cost (issue 13 P2): statements per page that do not grow with the data, one read of the
user's memberships per request, the incident page folding older settled publications, and the audit rows' filters
rendering exactly what the included fragments did."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.template import Context, Template
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from incidents import heartbeat, selectors, workflow
from incidents.models import (
    AuditEvent,
    DraftKind,
    Incident,
    Publication,
    PublicationState,
    Review,
    ReviewDecision,
    SystemMark,
)

from .publishing.factories import update_publication

FIELDS = {"title": "API errors", "severity": "major", "description": "Looking into it.", "stage": "investigating"}


def _statements(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]


def _incident_with_publications(api_service, responder, count: int, *, break_glass_first: bool = False) -> Incident:
    """An incident with ``count`` published updates, each approved (a Review on its revision), oldest first."""
    incident = Incident.objects.create(service=api_service, remote_id="4242", title="Busy")
    for n in range(count):
        publication = update_publication(incident=incident, author=responder, description=f"Update number {n}.")
        Publication.objects.filter(pk=publication.pk).update(
            state=PublicationState.PUBLISHED, remote_id="4242", created_at=timezone.now() + timedelta(seconds=n)
        )
        if break_glass_first and n == 0:
            Review.objects.filter(revision_id=publication.revision_id).update(
                decision=ReviewDecision.BREAK_GLASS, comment="Nobody answered"
            )
    return incident


# --- The incident page ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [3, 30])
def test_the_incident_page_costs_the_same_statements_with_3_or_30_approved_publications(
    count, api_service, responder, approver, as_user
):
    # Each publication's review (the break-glass mark) was read one query at a time: 30 publications made 45+.
    # The oldest was published by break-glass: the page lists it (with its reviewer) from the rows it read anyway.
    incident = _incident_with_publications(api_service, responder, count, break_glass_first=True)
    client = as_user(approver)
    url = reverse("incidents:incident_detail", args=[incident.pk])
    client.get(url)
    for path in (url, url + "?publications=all"):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(path)
        assert response.status_code == 200
        assert len(_statements(queries)) <= 14, _statements(queries)
        assert 'id="break-glass-flag-' in response.content.decode()


def test_the_incident_page_folds_older_settled_publications_but_never_one_that_needs_a_human(
    api_service, responder, approver, as_user
):
    incident = _incident_with_publications(api_service, responder, 14, break_glass_first=True)
    oldest = Publication.objects.filter(incident=incident).order_by("created_at")
    failed, folded = oldest[0], oldest[1]
    Publication.objects.filter(pk=failed.pk).update(state=PublicationState.FAILED, last_error="IsDown said no")
    client = as_user(approver)
    url = reverse("incidents:incident_detail", args=[incident.pk])

    html = client.get(url).content.decode()
    shown = set(map(int, re.findall(r'id="publication-(\d+)"', html)))
    # The ten latest, and the failed oldest one (an approver must act on it), but not the other old ones.
    assert len(shown) == 11 and failed.pk in shown and folded.pk not in shown
    assert "3 older publications (published, abandoned or superseded) not shown" in html
    assert 'href="?publications=all#publications"' in html
    assert "Show all 14 publications" in html
    # Its break-glass mark still shows (the review is read with the row).
    assert html.count('<span class="state state-break_glass" title="Published without a second approver">') == 1

    everything = client.get(url + "?publications=all").content.decode()
    assert set(map(int, re.findall(r'id="publication-(\d+)"', everything))) == set(
        Publication.objects.filter(incident=incident).values_list("pk", flat=True)
    )
    assert "Show only the latest publications" in everything


def test_publications_to_show_keeps_the_latest_and_everything_unsettled():
    def publication(state: str, watch: bool = False) -> Publication:
        return Publication(state=state, watch_until=timezone.now() if watch else None)

    rows = [publication(PublicationState.PUBLISHED) for _ in range(3)] + [
        publication(PublicationState.PUBLISHED),
        publication(PublicationState.PUBLISHED, watch=True),
        publication(PublicationState.RETRY_WAIT),
        publication(PublicationState.NEEDS_ATTENTION),
        publication(PublicationState.DUPLICATE_DETECTED),
        publication(PublicationState.ABANDONED),
        publication(PublicationState.SUPERSEDED),
        publication(PublicationState.SCHEDULED),
    ]
    shown = selectors.publications_to_show(rows, latest=3)
    assert shown == [*rows[:3], rows[4], rows[5], rows[6], rows[7], rows[10]]


# --- Every page: the user's memberships once --------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/", "/incidents/", "/audit/"])
def test_a_page_reads_the_users_memberships_once_for_the_navigation_and_every_role_check(url, approver, as_user):
    client = as_user(approver)
    client.get(url)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    reads = [sql for sql in _statements(queries) if 'FROM "incidents_membership"' in sql]
    assert len(reads) == 1, reads


# --- The dashboard --------------------------------------------------------------------------------------------------
def test_the_dashboard_with_drafts_under_review_costs_at_most_12_statements(
    api_service, responder, approver, approver2, as_user
):
    # Drafts of the approver's own (their revisions and reviews: one query), and drafts awaiting their review
    # (the navigation's badge is counted from the panel's rows).
    for n in range(3):
        draft = workflow.create(user=approver, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
        workflow.submit(draft_id=draft.pk, user=approver)
        workflow.decide(
            draft_id=draft.pk,
            revision_id=draft.revisions.get().pk,
            reviewer=approver2,
            decision=ReviewDecision.REQUEST_CHANGES,
            comment=f"Please say which region {n}.",
        )
        theirs = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
        workflow.submit(draft_id=theirs.pk, user=responder)
    client = as_user(approver)
    client.get("/")
    with CaptureQueriesContext(connection) as queries:
        html = client.get("/").content.decode()
    assert len(_statements(queries)) <= 12, _statements(queries)
    assert '<span class="badge" id="review-count" title="Awaiting my review">3</span>' in html
    assert html.count("Please say which region") == 3


def test_the_review_badge_is_still_counted_when_the_dashboard_panel_is_full(
    api_service, responder, approver, as_user, monkeypatch
):
    from incidents.views import dashboard

    monkeypatch.setattr(dashboard, "PANEL_LIMIT", 2)
    for _ in range(3):
        draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
        workflow.submit(draft_id=draft.pk, user=responder)
    html = as_user(approver).get("/").content.decode()
    assert '<span class="badge" id="review-count" title="Awaiting my review">3</span>' in html


def test_heartbeat_status_reads_the_latest_worker_and_beat_in_one_query(db):
    now = timezone.now()
    SystemMark.objects.create(name="worker:old", at=now - timedelta(minutes=5))
    SystemMark.objects.create(name="worker:new", at=now - timedelta(seconds=5))
    SystemMark.objects.create(name="beat", at=now - timedelta(minutes=1))
    SystemMark.objects.create(name="sync.paused_until", at=now + timedelta(hours=1))
    with CaptureQueriesContext(connection) as queries:
        status = heartbeat.status()
    assert len(queries) == 1
    assert status.worker_seen_at == now - timedelta(seconds=5)
    assert status.beat_seen_at == now - timedelta(minutes=1)


def test_heartbeat_status_without_marks_is_never_heard(db):
    status = heartbeat.status()
    assert status.worker_seen_at is None and status.beat_seen_at is None


# --- History and the audit rows -------------------------------------------------------------------------------------
def test_an_incidents_history_is_one_statement_for_the_incident_its_drafts_and_publications(
    api_service, responder, approver
):
    incident = _incident_with_publications(api_service, responder, 2)
    with CaptureQueriesContext(connection) as queries:
        history = selectors.incident_history(approver, incident)
    audit_reads = [sql for sql in _statements(queries) if "incidents_auditevent" in sql]
    assert len(audit_reads) == 1
    seqs = [event.seq for event in history.events]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == len(set(seqs))


# The fragments the audit rows and the history panels included for every event, before they became filters.
OLD_ACTION = (
    "{% with label=event.action_label %}{% if label != event.action %}{{ label }} {% endif %}"
    "<code>{{ event.action }}</code>{% endwith %}"
)
OLD_CHANGES = """{% with lines=event.change_lines %}{% if lines %}<ul class="audit-changes">
  {% for name, old, new in lines %}<li><span class="audit-field">{{ name }}</span>: <del>{{ old }}</del> → <ins>{{ new }}</ins></li>{% endfor %}
</ul>{% endif %}{% endwith %}"""  # noqa: E501


@pytest.mark.parametrize(
    ("action", "changes"),
    [
        ("draft.saved", {"title": ["Old <b>", "New & improved"], "severity": ["minor", "major"]}),
        ("no.longer.registered", {}),
        ("review.approved", {"odd": "not a pair", "list": [1, 2, 3], "none": [None, {"a": "<x>"}]}),
        ("draft.created", None),
    ],
)
def test_the_audit_filters_render_what_the_included_fragments_did(action, changes):
    event = AuditEvent(action=action, changes=changes)
    old = Template(OLD_ACTION + "|" + OLD_CHANGES).render(Context({"event": event}))
    new = Template("{% load audit_display %}{{ event|audit_action }}|{{ event|audit_changes }}").render(
        Context({"event": event})
    )
    assert new == old


def test_read_together_splits_one_union_back_into_its_panels_each_in_its_own_order(api_service):
    now = timezone.now()
    for n in range(6):
        incident = Incident.objects.create(
            service=api_service, remote_id=f"90{n}", title=f"Incident {n}", resolved=n % 2 == 0
        )
        Incident.objects.filter(pk=incident.pk).update(last_activity_at=now - timedelta(minutes=n))
    incidents = Incident.objects.select_related("service")
    with CaptureQueriesContext(connection) as queries:
        panels = selectors.read_together(
            {
                "open": selectors.Panel(
                    incidents.filter(resolved=False).order_by("-last_activity_at")[:2],
                    key=lambda incident: incident.last_activity_at,
                    reverse=True,
                ),
                "resolved": selectors.Panel(
                    incidents.filter(resolved=True).order_by("pk")[:5], key=lambda incident: incident.pk
                ),
                "none": selectors.Panel(incidents.filter(title="nothing")[:5], key=lambda incident: incident.pk),
            }
        )
    assert len(queries) == 1
    assert [i.title for i in panels["open"]] == ["Incident 1", "Incident 3"]
    assert [i.title for i in panels["resolved"]] == ["Incident 0", "Incident 2", "Incident 4"]
    assert panels["none"] == []
    assert panels["open"][0].service.name == api_service.name  # select_related kept


@pytest.mark.parametrize("value", ["", "draft.", "review.approved", "not.an.action", "<b>"])
def test_the_audit_action_select_renders_what_djangos_select_templates_did(value, auditor):
    from django import forms as django_forms

    from incidents.forms import AuditFilterForm

    form = AuditFilterForm.for_user(auditor, {"action": value})
    form.is_valid()
    field = form.fields["action"]
    ours = str(form["action"])
    field.widget = django_forms.Select(choices=field.choices)
    assert ours == str(form["action"])
    assert ours.count("<option") > 50
