"""Emails about reviews: approvers hear of a submitted revision, the author hears of the decision.

Called only from ``transaction.on_commit``, so nobody is told about something that did not happen. A mail
failure is logged and never undoes the action.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mass_mail
from django.urls import reverse

from .models import Review, Revision, Role

logger = logging.getLogger(__name__)


def _link(name: str, **kwargs) -> str:
    return settings.SITE_URL + reverse(name, kwargs=kwargs)


def _send(messages: list[tuple[str, str, str, list[str]]]) -> None:
    messages = [m for m in messages if m[3]]
    if not messages:
        return
    try:
        send_mass_mail(messages, fail_silently=False)
    except Exception:  # a mail outage must not hide the action; it is in the audit log either way
        logger.exception("could not send %d notification(s)", len(messages))


def revision_submitted(revision_id: int) -> None:
    revision = Revision.objects.select_related("draft", "draft__team", "draft__service", "submitted_by").get(
        pk=revision_id
    )
    draft = revision.draft
    approvers = (
        get_user_model()
        .objects.filter(memberships__team=draft.team, memberships__role=Role.APPROVER, is_active=True)
        .exclude(pk__in=[revision.author_id, revision.last_editor_id])
        .exclude(email="")
    )
    subject = f"[isdown-admin] Review needed: {draft.title or draft.get_kind_display()} ({draft.service.name})"
    body = (
        f"{revision.submitted_by.get_username()} submitted revision {revision.number} of draft #{draft.pk} "
        f"for {draft.service.name} ({draft.team.name}).\n\n"
        f"Review it: {_link('incidents:draft_review', pk=draft.pk)}\n"
    )
    _send([(subject, body, settings.DEFAULT_FROM_EMAIL, [user.email]) for user in approvers])


def revision_reviewed(review_id: int) -> None:
    review = Review.objects.select_related(
        "reviewer", "revision", "revision__draft", "revision__draft__author", "revision__draft__service"
    ).get(pk=review_id)
    draft = review.revision.draft
    author = draft.author
    subject = f"[isdown-admin] {review.get_decision_display()}: {draft.title or draft.get_kind_display()}"
    body = (
        f"{review.reviewer.get_username()} {review.get_decision_display().lower()} revision "
        f"{review.revision.number} of your draft #{draft.pk} ({draft.service.name}).\n"
    )
    if review.comment:
        body += f"\nComment:\n{review.comment}\n"
    body += f"\n{_link('incidents:draft_detail', pk=draft.pk)}\n"
    _send([(subject, body, settings.DEFAULT_FROM_EMAIL, [author.email] if author.email else [])])
