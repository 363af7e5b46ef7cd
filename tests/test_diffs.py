"""Diffs of draft fields: by line, then by word inside changed lines; line breaks kept and shown."""

from __future__ import annotations

import pytest
from django.urls import reverse

from incidents import workflow
from incidents.diffs import NEWLINE_MARK, Segment, diff_text
from incidents.models import DraftKind


def _sides(segments: tuple[Segment, ...]) -> tuple[str, str]:
    old = "".join(s.text for s in segments if s.op != "ins")
    new = "".join(s.text for s in segments if s.op != "del")
    return old, new


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Investigating.\nNext update in 30 min.", "Investigating.\nRolled back.\nNext update in 30 min."),
        ("Rolled back.\nMonitoring.", "Rolled back. Monitoring."),
        ("a\r\nb", "a\nb\n"),
        ("", "New text"),
        ("one two three\nfour", ""),
    ],
)
def test_a_diff_rebuilds_both_texts_exactly(old, new):
    assert _sides(diff_text(old, new)) == (old, new)


def test_words_are_diffed_inside_a_changed_line_and_other_lines_stay_whole():
    segments = diff_text("Line one\nLine two\nLine three", "Line one\nLine 2\nLine three\nLine four")
    assert segments == (
        Segment("same", "Line one\nLine "),
        Segment("del", "two"),
        Segment("ins", "2"),
        Segment("same", "\nLine three"),
        Segment("ins", "\nLine four"),
    )


def test_words_never_pair_up_across_lines():
    # Word by word, "the" and "is" of the second line would match the first line's.
    segments = diff_text("the api is down\nthe fix is rolling out", "the fix is rolling out\nthe api is up")
    assert segments == (
        Segment("del", "the api is down\n"),
        Segment("same", "the fix is rolling out"),
        Segment("ins", "\nthe api is up"),
    )


def test_a_removed_line_break_is_shown():
    segments = diff_text("Rolled back.\nMonitoring.", "Rolled back. Monitoring.")
    assert any(s.op == "del" and NEWLINE_MARK in s.shown for s in segments)


@pytest.mark.django_db
def test_the_review_diff_keeps_line_breaks(responder, approver, api_service, as_user):
    fields = {"title": "API", "severity": "minor", "stage": "investigating"}
    draft = workflow.create(
        user=responder,
        service=api_service,
        kind=DraftKind.OPEN,
        fields={**fields, "description": "Investigating.\nNext update in 30 min."},
    )
    workflow.submit(draft_id=draft.pk, user=responder)
    workflow.withdraw(draft_id=draft.pk, user=responder)
    draft.refresh_from_db()
    workflow.save(
        draft_id=draft.pk,
        user=responder,
        expected_version=draft.version,
        fields={**fields, "description": "Investigating.\nRolled back.\nNext update in 30 min."},
    )
    workflow.submit(draft_id=draft.pk, user=responder)
    html = as_user(approver).get(reverse("incidents:draft_review", args=[draft.pk])).content.decode()
    assert '<td class="diff-text">Investigating.\n<ins>Rolled back.' in html
