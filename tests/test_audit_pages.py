"""The audit-log pages: who may read them, filters, keyset pagination, exports, verify, the history fragment."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.template.loader import render_to_string
from django.test.utils import CaptureQueriesContext

from incidents import audit, audit_actions
from incidents.models import AuditEvent, Role
from incidents.selectors import AUDIT_PAGE_SIZE as PAGE_SIZE
from incidents.selectors import history_for

from .conftest import tamper_as_owner
from .factories import MembershipFactory, UserFactory

URL = "/audit/"
HTMX = {"HTTP_HX_REQUEST": "true"}


def _event(team, *, actor=None, action="draft.saved", summary="Saved", **kwargs) -> AuditEvent:
    return audit.record(action, actor=actor, team=team, summary=summary, **kwargs)


def _seqs(response) -> list[int]:
    return [event.seq for event in response.context["page"].events]


def _streamed(response) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content).decode()


@pytest.fixture
def data_auditor(data_team):
    user = UserFactory(username="data_auditor")
    MembershipFactory(user=user, team=data_team, role=Role.AUDITOR)
    return user


# --- Who may read it ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("persona", ["auditor", "approver"])
def test_auditors_and_approvers_read_their_teams_log(persona, request, platform, as_user):
    user = request.getfixturevalue(persona)
    event = _event(platform, summary="Platform thing happened")
    response = as_user(user).get(URL)
    assert response.status_code == 200
    assert _seqs(response) == [event.seq]
    assert b"Platform thing happened" in response.content


@pytest.mark.parametrize("path", [URL, "/audit/export.csv", "/audit/export.jsonl"])
def test_responder_is_refused_with_the_role_named(path, responder, platform, as_user):
    _event(platform, summary="secret")
    response = as_user(responder).get(path)
    assert response.status_code == 403
    assert b"auditor or approver role" in response.content
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


def test_outsider_is_refused(outsider, platform, as_user):
    _event(platform, summary="Platform secret")
    response = as_user(outsider).get(URL)
    assert response.status_code == 403
    assert b"Platform secret" not in response.content


def test_another_teams_auditor_sees_nothing_of_platform_anywhere(data_auditor, data_team, platform, approver, as_user):
    _event(platform, actor=approver, summary="Platform secret", target_type="incident", target_id="7")
    mine = _event(data_team, summary="Data thing")
    client = as_user(data_auditor)

    page = client.get(URL)
    assert _seqs(page) == [mine.seq]
    assert b"Platform secret" not in page.content
    # Asking for Platform by id, by actor or by target is a filter error or an empty page, never Platform's rows.
    assert client.get(URL, {"team": str(platform.pk)}).status_code == 422
    assert _seqs(client.get(URL, {"actor": "approver"})) == []
    assert _seqs(client.get(URL, {"target_type": "incident", "target_id": "7"})) == []
    for path in ("/audit/export.csv", "/audit/export.jsonl"):
        body = _streamed(client.get(path))
        assert "Platform secret" not in body
        assert "Data thing" in body
    assert history_for(data_auditor, target_type="incident", target_ids=["7"]).events == []


def test_team_less_events_are_for_staff_only(auditor, staff, platform, as_user, client, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):  # one event per lockout, not per failure
        client.post("/accounts/login/", {"username": "nobody", "password": "wrong"})
    failed = AuditEvent.objects.get(action="auth.locked_out")
    assert failed.team_id is None

    assert failed.seq not in _seqs(as_user(auditor).get(URL))
    staff_page = as_user(staff).get(URL)
    assert staff_page.status_code == 200
    assert failed.seq in _seqs(staff_page)
    assert failed.seq in _seqs(as_user(staff).get(URL, {"team": "none"}))
    # The "no team" choice is not offered to non-staff.
    assert as_user(auditor).get(URL, {"team": "none"}).status_code == 422


def test_anonymous_user_is_sent_to_sign_in(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


# --- Filters ------------------------------------------------------------------------------------------------
def test_filter_by_team(auditor, platform, data_team, as_user):
    MembershipFactory(user=auditor, team=data_team, role=Role.AUDITOR)
    p = _event(platform)
    d = _event(data_team)
    client = as_user(auditor)
    assert _seqs(client.get(URL)) == [d.seq, p.seq]
    assert _seqs(client.get(URL, {"team": str(platform.pk)})) == [p.seq]
    assert _seqs(client.get(URL, {"team": str(data_team.pk)})) == [d.seq]


def test_filter_by_actor_username_and_system_label(auditor, approver, responder, platform, as_user):
    by_approver = _event(platform, actor=approver)
    _event(platform, actor=responder)
    by_worker = _event(platform, actor_label=audit.SYSTEM_WORKER, action="publication.sending")
    client = as_user(auditor)
    assert _seqs(client.get(URL, {"actor": "approver"})) == [by_approver.seq]
    assert _seqs(client.get(URL, {"actor": "APPROVER"})) == [by_approver.seq]
    assert _seqs(client.get(URL, {"actor": "system:worker"})) == [by_worker.seq]
    assert _seqs(client.get(URL, {"actor": "nobody"})) == []


def _event_of_an_older_vocabulary(team, action: str, monkeypatch, **kwargs) -> AuditEvent:
    """An event recorded when ``action`` was a registered action; it is not one now."""
    with monkeypatch.context() as patch:
        patch.setitem(audit_actions.ACTIONS, action, audit_actions.AuditAction(action, "Old"))
        return _event(team, action=action, **kwargs)


def test_filter_by_action_exact_and_prefix(auditor, platform, as_user, monkeypatch):
    submitted = _event(platform, action="draft.submitted")
    saved = _event(platform, action="draft.saved")
    approved = _event(platform, action="review.approved")
    _event_of_an_older_vocabulary(platform, "drafts.other", monkeypatch)
    client = as_user(auditor)
    assert _seqs(client.get(URL, {"action": "draft.submitted"})) == [submitted.seq]
    assert _seqs(client.get(URL, {"action": "draft."})) == [saved.seq, submitted.seq]
    assert _seqs(client.get(URL, {"action": "draft.*"})) == [saved.seq, submitted.seq]
    assert _seqs(client.get(URL, {"action": "review.approved"})) == [approved.seq]
    # Without the dot it names no action (nor a kind): a clear error, not an empty page.
    response = client.get(URL, {"action": "draft"})
    assert response.status_code == 422
    assert "is not an action of this log" in response.content.decode()


def test_filter_by_target_type_id_and_label(auditor, platform, as_user):
    incident = _event(platform, target_type="incident", target_id="5", target_label="API down")
    draft = _event(platform, target_type="draft", target_id="5", target_label="Draft: API slow")
    other = _event(platform, target_type="draft", target_id="6", target_label="Dashboard blank")
    client = as_user(auditor)
    assert _seqs(client.get(URL, {"target_type": "draft"})) == [other.seq, draft.seq]
    assert _seqs(client.get(URL, {"target_id": "5"})) == [draft.seq, incident.seq]
    assert _seqs(client.get(URL, {"target_type": "draft", "target_id": "5"})) == [draft.seq]
    assert _seqs(client.get(URL, {"target": "api"})) == [draft.seq, incident.seq]


def test_filter_by_time_range_in_the_site_time_zone(auditor, platform, as_user, settings, monkeypatch):
    settings.TIME_ZONE = "Europe/Berlin"  # UTC+1 in March

    def at(hour: int, minute: int, second: int = 0) -> AuditEvent:
        moment = datetime(2025, 3, 1, hour, minute, second, tzinfo=UTC)
        monkeypatch.setattr(audit.timezone, "now", lambda: moment)
        return _event(platform, summary=f"at {hour}:{minute}:{second}")

    early = at(11, 59, 59)  # 12:59:59 Berlin
    on_the_minute = at(12, 0, 30)  # 13:00:30 Berlin
    late = at(13, 0)  # 14:00 Berlin
    monkeypatch.undo()
    client = as_user(auditor)
    # "To 13:00" includes the whole minute 13:00 Berlin.
    window = {"since": "2025-03-01T13:00", "until": "2025-03-01T13:00"}
    assert _seqs(client.get(URL, window)) == [on_the_minute.seq]
    assert _seqs(client.get(URL, {"since": "2025-03-01T13:00"})) == [late.seq, on_the_minute.seq]
    assert _seqs(client.get(URL, {"until": "2025-03-01T12:59"})) == [early.seq]


def test_filters_combine_and_page_links_keep_them(auditor, platform, as_user):
    for _ in range(PAGE_SIZE + 5):
        _event(platform, action="draft.saved", target_type="draft", target_id="1")
    _event(platform, action="review.approved", target_type="draft", target_id="1")
    response = as_user(auditor).get(URL, {"action": "draft.", "target_id": "1"})
    assert len(_seqs(response)) == PAGE_SIZE
    older = response.context["older_link"]
    assert "action=draft." in older
    assert "target_id=1" in older
    assert f"before={_seqs(response)[-1]}" in older
    second = as_user(auditor).get(URL + older)
    assert len(_seqs(second)) == 5
    assert "action=draft." in second.context["newer_link"]
    assert AuditEvent.objects.filter(seq__in=_seqs(second)).exclude(action="draft.saved").count() == 0


# --- Bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "yesterday"}, "Enter a date and time"),
        ({"until": "2025-02-30T10:00"}, "Enter a date and time"),
        ({"since": "2025-03-02T10:00", "until": "2025-03-01T10:00"}, "is before"),
        ({"action": "DROP TABLE"}, "lower-case dotted names"),
        ({"team": "not-a-team"}, "Select a valid choice"),
        ({"before": "abc"}, "page link is broken"),
        ({"before": "-4"}, "page link is broken"),
        ({"before": "9", "after": "3"}, "both"),
        ({"actor": "x" * 500}, "at most 150 characters"),
    ],
)
def test_bad_filter_input_is_a_clear_error_not_a_500(params, message, auditor, platform, as_user):
    _event(platform, summary="should not be listed")
    response = as_user(auditor).get(URL, params)
    assert response.status_code == 422
    content = response.content.decode()
    assert message in content
    assert "Fix the filters above" in content
    assert "should not be listed" not in content


def test_bad_filter_error_sits_next_to_its_field(auditor, as_user):
    response = as_user(auditor).get(URL, {"since": "nonsense"})
    assert 'id="id_since_error"' in response.content.decode()
    # The typed text stays in the input so it can be corrected.
    assert 'value="nonsense"' in response.content.decode()


def test_bad_filter_on_export_is_an_error_and_not_audited(auditor, as_user):
    response = as_user(auditor).get("/audit/export.csv", {"since": "nope"})
    assert response.status_code == 422
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


# --- Keyset pagination --------------------------------------------------------------------------------------
def test_pages_walk_newest_first_without_gaps_or_repeats(auditor, platform, as_user):
    seqs = [_event(platform, summary=f"e{i}").seq for i in range(PAGE_SIZE * 2 + 7)]
    client = as_user(auditor)
    seen: list[int] = []
    link = ""
    while True:
        response = client.get(URL + link)
        seen.extend(_seqs(response))
        link = response.context["older_link"]
        if not link:
            break
    assert seen == sorted(seqs, reverse=True)


def test_older_page_does_not_shift_when_new_events_arrive(auditor, platform, as_user):
    for i in range(PAGE_SIZE * 2 + 3):
        _event(platform, summary=f"e{i}")
    client = as_user(auditor)
    first = client.get(URL)
    older_link = first.context["older_link"]
    second_before = _seqs(client.get(URL + older_link))

    for i in range(10):
        _event(platform, summary=f"late {i}")
    second_after = _seqs(client.get(URL + older_link))
    assert second_after == second_before
    assert len(second_after) == PAGE_SIZE
    assert max(second_after) < min(_seqs(first))


def test_newer_link_goes_back_to_the_previous_page(auditor, platform, as_user):
    for i in range(PAGE_SIZE * 2 + 3):
        _event(platform, summary=f"e{i}")
    client = as_user(auditor)
    first = client.get(URL)
    assert first.context["newer_link"] == ""
    second = client.get(URL + first.context["older_link"])
    back = client.get(URL + second.context["newer_link"])
    assert _seqs(back) == _seqs(first)
    assert back.context["newer_link"] == ""


def test_pages_use_neither_offset_nor_count(auditor, platform, as_user):
    for i in range(PAGE_SIZE + 1):
        _event(platform, summary=f"e{i}")
    client = as_user(auditor)
    first = client.get(URL)
    with CaptureQueriesContext(connection) as queries:
        client.get(URL + first.context["older_link"])
    audit_sql = [q["sql"].upper() for q in queries.captured_queries if "INCIDENTS_AUDITEVENT" in q["sql"].upper()]
    assert audit_sql
    assert not any("OFFSET" in sql or "COUNT(" in sql for sql in audit_sql)
    assert any('"SEQ" <' in sql for sql in audit_sql)


# --- htmx and plain ------------------------------------------------------------------------------------------
def test_plain_request_renders_the_whole_page(auditor, platform, as_user):
    _event(platform, summary="visible")
    response = as_user(auditor).get(URL)
    content = response.content.decode()
    assert content.lstrip().startswith("<!doctype html>")
    assert content.count('id="audit-filters"') == 1
    assert content.count('id="audit-results"') == 1
    assert "hx-swap-oob" not in content
    assert 'hx-push-url="true"' in content


def test_htmx_request_renders_only_the_results_and_the_filters_out_of_band(auditor, platform, as_user):
    _event(platform, summary="visible")
    response = as_user(auditor).get(URL, {"action": "draft."}, **HTMX)
    content = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in content
    assert content.lstrip().startswith('<section id="audit-results"')
    assert 'hx-swap-oob="true"' in content
    assert "visible" in content
    assert "HX-Request" in response["Vary"]


def test_htmx_request_with_bad_filters_is_a_swappable_error(auditor, as_user):
    response = as_user(auditor).get(URL, {"since": "soon"}, **HTMX)
    content = response.content.decode()
    assert response.status_code == 422  # static/js/app.js swaps 422 answers
    assert "<html" not in content
    assert "Enter a date and time" in content


def test_htmx_history_restore_gets_the_whole_page(auditor, as_user):
    response = as_user(auditor).get(URL, HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true")
    assert "<html" in response.content.decode()


# --- Rows ---------------------------------------------------------------------------------------------------
def test_row_shows_every_column_and_the_field_changes(auditor, approver, platform, as_user):
    _event(
        platform,
        actor=approver,
        action="draft.saved",
        target_type="draft",
        target_id="12",
        target_label="API outage",
        summary="Saved the draft",
        changes={"title": ["Old title", "New title"], "severity": [None, "major"]},
    )
    content = as_user(auditor).get(URL).content.decode()
    for text in ("approver", "Platform", "draft.saved", "API outage", "draft #12", "Saved the draft"):
        assert text in content
    assert '<span class="audit-field">title</span>: <del>Old title</del> → <ins>New title</ins>' in content
    assert '<span class="audit-field">severity</span>: <del>∅</del> → <ins>major</ins>' in content


def test_html_in_summaries_labels_and_changes_is_escaped(auditor, platform, as_user):
    _event(
        platform,
        summary="<script>alert('s')</script>",
        target_label="<img src=x onerror=alert(1)>",
        changes={"title": ["<b>old</b>", "<i>new</i>"]},
    )
    content = as_user(auditor).get(URL).content.decode()
    assert "<script>alert" not in content
    assert "<img src=x" not in content
    assert "<b>old</b>" not in content
    assert "&lt;script&gt;alert(&#x27;s&#x27;)&lt;/script&gt;" in content
    assert "&lt;img src=x onerror=alert(1)&gt;" in content
    assert "&lt;i&gt;new&lt;/i&gt;" in content


# --- Exports ------------------------------------------------------------------------------------------------
def test_csv_export_streams_and_neutralises_formulas(auditor, platform, as_user):
    _event(platform, target_label='=HYPERLINK("http://x","y")', summary="+1 and -2", target_type="incident")
    response = as_user(auditor).get("/audit/export.csv")
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith("attachment; filename=")
    rows = list(csv.DictReader(io.StringIO(_streamed(response))))
    row = next(r for r in rows if r["action"] == "draft.saved")
    assert row["target_label"] == '\'=HYPERLINK("http://x","y")'
    assert row["summary"] == "'+1 and -2"
    # Every hashed field is there, so the chain can be checked offline.
    assert set(audit.HASHED_FIELDS) <= set(rows[0])


def test_jsonl_export_lines_parse_and_match_the_rows(auditor, platform, as_user):
    events = [_event(platform, summary=f"line {i}", changes={"n": [i, i + 1]}) for i in range(3)]
    response = as_user(auditor).get("/audit/export.jsonl", {"action": "draft.saved"})
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Disposition"].startswith("attachment; filename=")
    lines = _streamed(response).splitlines()
    header, *signed_and_events = [json.loads(line) for line in lines]
    # A header with the signing key, the signed checkpoints, then the events (which carry no "type").
    assert header["type"] == "header" and header["public_key"]
    parsed = [row for row in signed_and_events if "type" not in row]
    assert all(row["type"] == "checkpoint" for row in signed_and_events if "type" in row)
    assert [row["seq"] for row in parsed] == [e.seq for e in reversed(events)]
    assert parsed[0]["changes"] == {"n": [2, 3]}
    assert parsed[0]["hash"] == events[-1].hash


def test_export_keeps_the_filters(auditor, platform, as_user):
    _event(platform, action="draft.saved", summary="keep")
    _event(platform, action="review.approved", summary="drop")
    body = _streamed(as_user(auditor).get("/audit/export.csv", {"action": "draft.saved"}))
    assert "keep" in body
    assert "drop" not in body


def test_export_is_audited_before_streaming_starts(auditor, platform, as_user):
    _event(platform, summary="x")
    response = as_user(auditor).get("/audit/export.jsonl", {"action": "draft.", "team": str(platform.pk)})
    # Nothing has been streamed yet, and the export is already on record.
    exported = AuditEvent.objects.get(action="audit.exported")
    assert exported.actor_label == "auditor"
    assert exported.team_id == platform.pk
    assert exported.context["export"] == {"format": "jsonl", "filters": {"team": "Platform", "action": "draft."}}
    assert "JSON Lines" in exported.summary
    assert "action=draft." in exported.summary
    _streamed(response)
    assert audit.verify_chain().ok


def test_export_of_many_rows_is_chunked(auditor, platform, as_user):
    for i in range(300):
        _event(platform, summary=f"row {i} " + "x" * 300)
    response = as_user(auditor).get("/audit/export.csv")
    chunks = list(response.streaming_content)
    # Neither one write per row nor one write for everything.
    assert 1 < len(chunks) < 300
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert [row["action"] for row in rows].count("draft.saved") == 300
    # The export's own event is already on record when the stream starts, so it is the first row.
    assert rows[0]["action"] == "audit.exported"


# --- Verify -------------------------------------------------------------------------------------------------
def test_verify_shows_ok_with_count_and_head(auditor, platform, as_user):
    client = as_user(auditor)  # signing in is itself an event, so do it first
    events = [_event(platform) for _ in range(3)]
    response = client.post("/audit/verify/", follow=True)
    assert response.status_code == 200
    content = response.content.decode()
    assert "Chain verified" in content
    assert f"OK: {events[-1].seq} events, head {events[-1].hash}" in content
    verified = AuditEvent.objects.get(action="audit.verified")
    assert verified.seq == events[-1].seq + 1
    assert verified.team_id == platform.pk
    assert "OK" in verified.summary


def test_verify_as_htmx_returns_the_result_box(auditor, platform, as_user):
    _event(platform)
    response = as_user(auditor).post("/audit/verify/", **HTMX)
    content = response.content.decode()
    assert "<html" not in content
    assert 'id="verify-result"' in content
    assert "Chain OK" in content


@pytest.mark.django_db(transaction=True)
def test_verify_shows_the_broken_seq_when_tampered(auditor, platform, as_user):
    client = as_user(auditor)
    events = [_event(platform) for _ in range(4)]
    # As only the owner could: behind the trigger's back.
    tamper_as_owner("UPDATE incidents_auditevent SET summary = 'nothing' WHERE seq = %s", [events[2].seq])
    content = client.post("/audit/verify/", **HTMX).content.decode()
    assert f"Chain BROKEN at seq <strong>{events[2].seq}</strong>" in content
    plain = client.post("/audit/verify/", follow=True).content.decode()
    assert f"BROKEN at seq {events[2].seq}" in plain
    assert "BROKEN" in AuditEvent.objects.filter(action="audit.verified").first().summary


def test_verify_needs_post_and_the_role(auditor, responder, as_user):
    assert as_user(auditor).get("/audit/verify/").status_code == 405
    assert as_user(responder).post("/audit/verify/").status_code == 403
    assert not AuditEvent.objects.filter(action="audit.verified").exists()


def test_verify_requires_a_csrf_token(auditor):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(auditor)
    assert client.post("/audit/verify/").status_code == 403
    assert not AuditEvent.objects.filter(action="audit.verified").exists()


# --- History fragment ---------------------------------------------------------------------------------------
def test_history_shows_the_object_and_its_related_events(auditor, platform, data_team, as_user):
    incident_event = _event(platform, target_type="incident", target_id="3", summary="Incident opened")
    draft_event = _event(
        platform, target_type="draft", target_id="8", summary="Draft saved", changes={"title": ["a", "<b>"]}
    )
    _event(platform, target_type="incident", target_id="4", summary="Another incident")
    _event(data_team, target_type="incident", target_id="3", summary="Data team's incident 3")

    history = history_for(auditor, target_type="incident", target_ids=[3], also={"draft": [8]})
    assert history.visible
    assert [e.seq for e in history.events] == [draft_event.seq, incident_event.seq]
    assert history.more_url == "/audit/?target_type=incident&target_id=3"

    html = render_to_string("incidents/_history.html", {"history": history})
    assert "Incident opened" in html
    assert "Draft saved" in html
    assert "&lt;b&gt;" in html
    assert "Another incident" not in html
    assert "Data team" not in html


def test_history_is_limited_and_says_so(auditor, platform):
    for _ in range(5):
        _event(platform, target_type="draft", target_id="1")
    history = history_for(auditor, target_type="draft", target_ids=["1"], limit=3)
    assert len(history.events) == 3
    assert history.truncated
    assert "latest 3 events" in render_to_string("incidents/_history.html", {"history": history})


def test_history_is_hidden_from_responders(responder, platform):
    _event(platform, target_type="draft", target_id="1", summary="secret")
    history = history_for(responder, target_type="draft", target_ids=["1"])
    assert not history.visible
    html = render_to_string("incidents/_history.html", {"history": history})
    assert "secret" not in html
    assert "auditors and approvers" in html


# --- Navigation ---------------------------------------------------------------------------------------------
def test_nav_links_to_the_audit_log_only_for_readers(auditor, responder, as_user):
    assert b'href="/audit/"' in as_user(auditor).get("/").content
    assert b'href="/audit/"' not in as_user(responder).get("/").content
