"""The public-text lint in the app: its warnings laid out for the draft form and the review page, and the one
writer of ``AcceptedWarning`` (an approver accepting a warning on the revision in review, audited with the rule
and the span). The rules themselves are in ``public_text_lint.py`` (pure, no Django)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils.safestring import SafeString, mark_safe

from . import access, audit
from .models import REVIEWABLE_DRAFT_STATES, AcceptedWarning, Draft, Revision
from .public_text_lint import TEXT_FIELDS, Finding, highlight, lint

FIELD_LABELS = {"title": "Title", "description": "Description"}


class AcceptError(Exception):
    """An acceptance refused; the message is for the approver."""


@dataclass(frozen=True)
class FieldWarnings:
    """One field's text with every warning's span marked, and its warnings, each with who accepted it ("": nobody)."""

    field: str
    label: str
    marked: SafeString
    warnings: list[tuple[Finding, str]]


def warnings_by_field(
    fields: Mapping[str, str], accepted: Mapping[tuple[str, str, int, int], str] | None = None
) -> list[FieldWarnings]:
    """The lint of a draft's fields, per field, in the order the form shows them; fields without a warning left out."""
    findings = lint(fields)
    result = []
    for name in TEXT_FIELDS:
        mine = [finding for finding in findings if finding.field == name]
        if not mine:
            continue
        text = fields.get(name) or ""
        # highlight() escapes every character of the text: the only markup is its own <mark>.
        marked = mark_safe(highlight(text, [(f.start, f.end) for f in mine]))  # noqa: S308
        warnings = [(f, (accepted or {}).get(f.key, "")) for f in mine]
        result.append(FieldWarnings(name, FIELD_LABELS.get(name, name), marked, warnings))
    return result


def accepted_by(revision: Revision | None) -> dict[tuple[str, str, int, int], str]:
    """The revision's accepted warnings: ``{(rule, field, start, end): who accepted it}``."""
    if revision is None:
        return {}
    rows = revision.accepted_warnings.values_list("rule", "field", "start", "end", "accepted_by__username")
    return {(rule, field, start, end): username for rule, field, start, end, username in rows}


def accept(*, user, draft: Draft, revision_id: int, rule: str, field: str, start: int, end: int) -> AcceptedWarning:
    """Accept one warning of the revision in review: only an approver of the team who did not write or edit it
    (the same eyes that may approve it), and only a warning the lint gives on that revision's text."""
    access.require_role(user, draft.team, access.REVIEWING_ROLES, action="accept a warning")
    with transaction.atomic():
        locked = Draft.objects.select_for_update(no_key=True).get(pk=draft.pk)
        revision = locked.revisions.order_by("-number").first()
        if locked.state not in REVIEWABLE_DRAFT_STATES or revision is None or revision.pk != revision_id:
            raise AcceptError("This revision is no longer the one in review; reload to see the current one.")
        if user.pk in revision.editors or user.pk in (revision.author_id, revision.last_editor_id):
            raise AcceptError("You wrote or edited this draft: someone else must judge its warnings.")
        finding = next(
            (f for f in lint(revision.fields) if f.key == (rule, field, start, end)),
            None,
        )
        if finding is None:
            raise AcceptError("That warning is not on this revision's text.")
        try:
            with transaction.atomic():
                accepted = AcceptedWarning.objects.create(
                    revision=revision,
                    rule=rule,
                    field=field,
                    start=start,
                    end=end,
                    text=finding.text,
                    accepted_by=user,
                )
        except IntegrityError:
            raise AcceptError("That warning is already accepted.") from None
        audit.record(
            "review.warning_accepted",
            actor=user,
            team=locked.team,
            target=locked,
            summary=(
                f"{user.get_username()} accepted the {rule} warning on the {field} of revision {revision.number} "
                f"of draft #{locked.pk}"
            ),
            changes={
                "rule": [None, rule],
                "field": [None, field],
                "span": [None, [start, end]],
                "text": [None, finding.text],
                "revision": [None, revision.number],
            },
        )
    return accepted
