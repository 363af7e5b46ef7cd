"""A user's display preferences (today: the time zone times are shown and read in). The only writer of
UserPreference; the middleware activates the zone for each request."""

from __future__ import annotations

import zoneinfo
from functools import cache

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction

from . import audit
from .models import UserPreference


@cache
def time_zone_names() -> tuple[str, ...]:
    """Every zone a user may choose, sorted."""
    return tuple(sorted(zoneinfo.available_timezones()))


def time_zone_of(user: AbstractBaseUser | AnonymousUser) -> str:
    """The zone this user reads and types times in: their choice, or the site's."""
    if not user.is_authenticated:
        return settings.TIME_ZONE
    chosen = UserPreference.objects.filter(user_id=user.pk).values_list("time_zone", flat=True).first()
    return chosen if chosen in time_zone_names() else settings.TIME_ZONE


def set_time_zone(*, user: AbstractBaseUser, time_zone: str) -> None:
    """Choose the zone (an IANA name, or "" for the site's); audited with the zone before and after."""
    if time_zone and time_zone not in time_zone_names():
        raise ValueError(f"unknown time zone: {time_zone!r}")
    with transaction.atomic():
        preference, _ = UserPreference.objects.select_for_update().get_or_create(user_id=user.pk)
        before = preference.time_zone
        if before == time_zone:
            return
        preference.time_zone = time_zone
        preference.save(update_fields=["time_zone"])
        audit.record(
            "user.time_zone_changed",
            actor=user,
            target=user,
            summary=f"{user.get_username()} chose the time zone {time_zone or settings.TIME_ZONE}",
            changes={"time_zone": [before or None, time_zone or None]},
        )
