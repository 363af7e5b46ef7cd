"""What base.html needs on every page: the user's teams and roles, counts for the navigation, the sandbox flag."""

from __future__ import annotations

from django.conf import settings

from . import access


def navigation(request) -> dict[str, object]:
    user = getattr(request, "user", None)
    context: dict[str, object] = {"sandbox_mode": not settings.ISDOWN_API_KEY}
    if user is None or not user.is_authenticated:
        return context
    context["my_memberships"] = list(access.memberships(user))
    context["can_read_audit_log"] = access.can_read_audit_log(user)
    context["review_count"] = _review_count(user)
    return context


def _review_count(user) -> int:
    # Filled by the review workflow: revisions in review in my teams that I may approve.
    from .models import Draft, DraftState

    team_ids = access.team_ids(user, access.REVIEWING_ROLES)
    if not team_ids:
        return 0
    return (
        Draft.objects.filter(team_id__in=team_ids, state=DraftState.IN_REVIEW)
        .exclude(author=user)
        .exclude(last_editor=user)
        .count()
    )
