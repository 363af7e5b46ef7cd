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
    # Read once per request (access.py caches them on the user): the role checks of the view used the same rows.
    context["my_memberships"] = access.membership_list(user)
    context["can_read_audit_log"] = access.can_read_audit_log(user)
    # A view that read every waiting review already (the dashboard, when its panel is not full) says how many.
    known = getattr(request, selectors.AWAITING_REVIEW_COUNT, None)
    context["review_count"] = known if known is not None else selectors.awaiting_review(user).count()
    return context
