"""What base.html needs on every page: the user's teams and roles, counts for the navigation, the sandbox flag."""

from __future__ import annotations

from django.conf import settings

from . import access, selectors


def navigation(request) -> dict[str, object]:
    user = getattr(request, "user", None)
    context: dict[str, object] = {
        # Whenever the sandbox is mounted or published to, every page says so.
        "sandbox_mode": settings.PUBLISHES_TO_SANDBOX,
        "sandbox_mounted": settings.SANDBOX_ENABLED,
        "isdown_api_url": settings.ISDOWN_API_URL,
    }
    if user is None or not user.is_authenticated:
        return context
    context["my_memberships"] = list(access.memberships(user))
    context["can_read_audit_log"] = access.can_read_audit_log(user)
    context["review_count"] = selectors.awaiting_review(user).count()
    return context
