"""Audit what Django and django-axes own: sign-ins, sign-outs, lockouts and their resets, and every change to
users, groups, permissions and passwords, however it is made (admin, ``manage.py changepassword`` or
``createsuperuser``, the shell).

These receivers only write audit events (STYLE.md, convention 4). Inside a transaction (the admin, our views)
the event commits with the change; outside one (the shell, commands) right after it, and an audit write that
fails raises to whoever made the change.

Failed sign-ins are not audited one by one (anonymous traffic must not grow the chain or queue on its lock):
axes counts them, and the audit log gets one event per lockout (the failures that locked, and the username's
failures by address), and a sign-in says how many failures it cleared. A lockout lasts its cool-off however often
the door is tried meanwhile, so a username + address writes at most one event per cool-off; lockouts of
usernames that do not exist, at most one per address per cool-off.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import get_hasher, identify_hasher
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db.models import Sum
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver
from django.utils import timezone

from . import audit
from .middleware import SESSION_END_REASON, current_request

User = get_user_model()
# The user fields whose changes are audited; last_login and date_joined are not changes anyone makes.
USER_FIELDS = ("username", "email", "first_name", "last_name", "is_active", "is_staff", "is_superuser")
FLAG_WORDS = {
    "is_staff": ("staff granted", "staff revoked"),
    "is_superuser": ("superuser granted", "superuser revoked"),
    "is_active": ("activated", "deactivated"),
}
# The most addresses one lockout event lists (the count of all of them is recorded too).
LOCKOUT_ADDRESSES_LISTED = 20
# Set on a request during which axes reset failure counts, so the login audited next can say how many it cleared.
FAILURES_CLEARED = "_audit_failures_cleared"


# --- Who did it --------------------------------------------------------------------------------------------
def _process_label() -> str:
    """``system:manage.py changepassword``, ``system:manage.py shell``, ``system:gunicorn``…"""
    argv = sys.argv or [""]
    path = Path(argv[0])
    program = path.parent.name if path.name == "__main__.py" else path.name or "python"  # python -m pytest
    if program in ("manage.py", "django-admin") and len(argv) > 1:
        return f"system:manage.py {argv[1]}"[:150]
    return f"system:{program}"[:150]


def _actor() -> dict[str, Any]:
    request = current_request()
    user = getattr(request, "user", None) if request is not None else None
    if user is not None and user.is_authenticated:
        return {"actor": user}
    if request is not None:
        return {"actor": None, "actor_label": "anonymous"}
    return {"actor": None, "actor_label": _process_label()}


def _by() -> str:
    request = current_request()
    user = getattr(request, "user", None) if request is not None else None
    if user is not None and user.is_authenticated:
        return f" by {user.get_username()}"
    if request is None:
        return f" by {_process_label().removeprefix('system:')}"
    return ""


# --- Sign-in, sign-out, lockout -------------------------------------------------------------------------------
def _cool_off_start():
    cool_off = get_cool_off()
    return timezone.now() - cool_off if cool_off is not None else None


def _failure_limit() -> int:
    limit = settings.AXES_FAILURE_LIMIT
    return limit if isinstance(limit, int) else 5


def _failures(username: str, ip_address: str | None) -> int:
    attempts = AccessAttempt.objects.filter(username=username, ip_address=ip_address)
    if (start := _cool_off_start()) is not None:
        attempts = attempts.filter(attempt_time__gte=start)
    return attempts.aggregate(total=Sum("failures_since_start"))["total"] or 0


@receiver(user_logged_in)
def audit_login(sender, request, user, **kwargs) -> None:
    cleared = getattr(request, FAILURES_CLEARED, {}).get(
        (user.get_username(), getattr(request, "axes_ip_address", None)), 0
    )
    after = f" after {cleared} failed attempt{'s' if cleared != 1 else ''}" if cleared else ""
    audit.record(
        "auth.login",
        actor=user,
        target=user,
        summary=f"{user.get_username()} signed in{after}",
        context={"failures_before": cleared} if cleared else None,
    )


@receiver(user_logged_out)
def audit_logout(sender, request, user, **kwargs) -> None:
    if user is None:
        return
    reason = getattr(request, SESSION_END_REASON, None)
    if reason == "idle":
        action, summary = "auth.session_expired", f"{user.get_username()} signed out: idle too long"
    elif reason == "age":
        action, summary = "auth.session_expired", f"{user.get_username()} signed out: the session's time was up"
    else:
        action, summary = "auth.logout", f"{user.get_username()} signed out"
    audit.record(action, actor=user, target=user, summary=summary)


@receiver(user_locked_out)
def audit_lockout(sender, request, username, ip_address, **kwargs) -> None:
    """One event per lockout. Axes signals on the failure that locks (it has just counted the failures) and on
    every attempt while locked (it has not: AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT is off); only the
    first is written."""
    failures = getattr(request, "axes_failures_since_start", None)
    if failures is None:
        return
    username = str(username or "")[:150]
    target = User.objects.filter(username=username).first()
    start = _cool_off_start()
    if target is None and _unknown_username_lockout_already_audited(username, ip_address, start):
        return
    by_address: dict[str, int] = {}
    attempts = AccessAttempt.objects.filter(username=username)
    if start is not None:
        attempts = attempts.filter(attempt_time__gte=start)
    for row in attempts.values("ip_address").annotate(failures=Sum("failures_since_start")):
        by_address[row["ip_address"] or ""] = row["failures"] or 0
    listed = dict(sorted(by_address.items(), key=lambda item: (-item[1], item[0]))[:LOCKOUT_ADDRESSES_LISTED])
    total = sum(by_address.values())
    cool_off = get_cool_off()
    minutes = round(cool_off.total_seconds() / 60) if cool_off else 0
    others = (
        f"; {total} failures for this username from {len(by_address)} addresses in the last {minutes} minutes"
        if len(by_address) > 1
        else ""
    )
    unknown = (
        f"; no such user: further lockouts of unknown usernames from {ip_address} in the next {minutes} minutes "
        "are not written one by one"
        if target is None
        else ""
    )
    audit.record(
        "auth.locked_out",
        actor=None,
        actor_label=f"anonymous:{username}" if username else "anonymous",
        target=target,
        target_type="user",
        target_label=username,
        summary=f"{username or '(no username)'} locked out for {minutes} minutes after {failures} failed "
        f"sign-ins from {ip_address}{others}{unknown}",
        context={
            "ip": ip_address,
            "failures": failures,
            "failures_for_username": total,
            "addresses_for_username": len(by_address),
            "failures_by_address": listed,
            "unknown_username": target is None,
        },
    )


def _unknown_username_lockout_already_audited(username: str, ip_address: str | None, start) -> bool:
    """Lockouts of usernames that do not exist threaten no account, and a spray of them is one event per address
    per cool-off: was another unknown username already locked out from this address in the window?"""
    others = AccessAttempt.objects.filter(ip_address=ip_address).exclude(username=username)
    if start is not None:
        others = others.filter(attempt_time__gte=start)
    others = others.exclude(username__in=User.objects.values("username"))
    locked = others.values("username").annotate(total=Sum("failures_since_start")).filter(total__gte=_failure_limit())
    return locked.exists()


def _pair(attempt: AccessAttempt) -> tuple[str, str | None]:
    return (attempt.username or "", attempt.ip_address)


@receiver(pre_delete, sender=AccessAttempt)
def note_failures_before_reset(sender, instance: AccessAttempt, origin=None, **kwargs) -> None:
    """Remember, once per deletion, how many failures the username + address had before it (to tell a lockout
    reset from the clean-up of expired attempts)."""
    state = _deletion_state(origin or instance)
    pair = _pair(instance)
    if pair not in state["before"]:
        state["before"][pair] = _failures(*pair)


@receiver(post_delete, sender=AccessAttempt)
def audit_lockout_reset(sender, instance: AccessAttempt, origin=None, **kwargs) -> None:
    """``axes_reset*`` commands, the axes admin, ``axes.utils.reset()`` or a shell delete that lifts a lockout
    is audited; clearing failures below the limit (a successful sign-in) and expired ones are not, but the
    sign-in event says how many it cleared."""
    state = _deletion_state(origin or instance)
    pair = _pair(instance)
    if pair in state["done"]:
        return
    state["done"].add(pair)
    before, after = state["before"].get(pair, 0), _failures(*pair)
    limit = _failure_limit()
    if before >= limit > after:
        username, ip_address = pair
        audit.record(
            "auth.lockout_reset",
            **_actor(),
            target=User.objects.filter(username=username).first(),
            target_type="user",
            target_label=username,
            summary=f"Lockout of {username or '(no username)'} from {ip_address} reset{_by()} "
            f"({before} failures cleared)",
            changes={"failures": [before, after]},
            context={"locked_ip": ip_address},
        )
    elif before > after and (request := current_request()) is not None:
        cleared = getattr(request, FAILURES_CLEARED, {})
        cleared[pair] = cleared.get(pair, 0) + before - after
        setattr(request, FAILURES_CLEARED, cleared)


def _deletion_state(origin: Any) -> dict[str, Any]:
    """Per-deletion bookkeeping, kept on the object that started it (a queryset deletes many rows at once)."""
    state = getattr(origin, "_audit_lockout_state", None)
    if state is None:
        state = {"before": {}, "done": set()}
        origin._audit_lockout_state = state
    return state


# --- Users ------------------------------------------------------------------------------------------------
def _user_snapshot(values: dict[str, Any]) -> dict[str, Any]:
    return {name: values.get(name) for name in USER_FIELDS}


def _password_event(instance, old_hash: str, update_fields) -> tuple[str, str]:
    """``(action, words)`` for a stored hash that changed. A hash upgraded at sign-in (the same password, a newer
    hasher or more iterations) is told apart from a new password, and still audited."""
    new_hash = instance.password or ""
    if not instance.has_usable_password():
        return "user.password_changed", "password disabled"
    if not old_hash or old_hash.startswith("!"):
        return "user.password_changed", "password set"
    rehash = getattr(instance, "_password", None) is None and update_fields is not None
    rehash = rehash and set(update_fields) == {"password"}
    if rehash:
        try:
            old_hasher = identify_hasher(old_hash)
            rehash = old_hasher.must_update(old_hash) and not get_hasher().must_update(new_hash)
        except ValueError:
            rehash = False
    if rehash:
        return "user.password_rehashed", "password hash upgraded at sign-in"
    return "user.password_changed", "password changed"


@receiver(pre_save, sender=User)
def remember_user_before_save(sender, instance, update_fields=None, **kwargs) -> None:
    if instance.pk is None:
        return
    watched = {*USER_FIELDS, "password"}
    if update_fields is not None and not watched & set(update_fields):
        return  # e.g. last_login at every sign-in
    instance._audit_before = User.objects.filter(pk=instance.pk).values(*watched).first()


@receiver(post_save, sender=User)
def audit_user_saved(sender, instance, created, update_fields=None, **kwargs) -> None:
    before = instance.__dict__.pop("_audit_before", None)
    after = _user_snapshot(instance.__dict__)
    name = instance.get_username()
    if created:
        kind = "Superuser" if instance.is_superuser else "Staff user" if instance.is_staff else "User"
        audit.record(
            "user.created",
            **_actor(),
            target=instance,
            summary=f"{kind} {name} created{_by()}",
            changes={
                **audit.field_changes({}, after),
                "password": [None, "set" if instance.has_usable_password() else "none"],
            },
        )
        return
    if before is None:
        return
    changes = audit.field_changes(_user_snapshot(before), after)
    if changes:
        words = [FLAG_WORDS[field][0 if new else 1] for field, (_old, new) in changes.items() if field in FLAG_WORDS]
        words += [f"{field} changed" for field in changes if field not in FLAG_WORDS]
        audit.record(
            "user.changed",
            **_actor(),
            target=instance,
            summary=f"User {name}: {', '.join(words)}{_by()}",
            changes=changes,
        )
    if (before.get("password") or "") != (instance.password or ""):
        action, what = _password_event(instance, before.get("password") or "", update_fields)
        # Never the hashes themselves: the audit log is readable by staff and exported.
        audit.record(action, **_actor(), target=instance, summary=f"User {name}: {what}{_by()}")


@receiver(pre_delete, sender=User)
def remember_memberships_before_delete(sender, instance, **kwargs) -> None:
    # Memberships go with the user (CASCADE), unseen by the admin's audit: the deletion event names them.
    instance._audit_memberships = sorted(
        f"{team}: {role}" for team, role in instance.memberships.values_list("team__name", "role")
    )


@receiver(post_delete, sender=User)
def audit_user_deleted(sender, instance, **kwargs) -> None:
    changes = audit.field_changes(_user_snapshot(instance.__dict__), {})
    changes["memberships"] = [instance.__dict__.pop("_audit_memberships", []), None]
    audit.record(
        "user.deleted",
        **_actor(),
        target=instance,
        target_id=instance.pk,
        summary=f"User {instance.get_username()} deleted{_by()}",
        changes=changes,
    )


# --- Groups and permissions ----------------------------------------------------------------------------------
@receiver(pre_save, sender=Group)
def remember_group_before_save(sender, instance, **kwargs) -> None:
    if instance.pk is not None:
        instance._audit_before = Group.objects.filter(pk=instance.pk).values("name").first()


@receiver(post_save, sender=Group)
def audit_group_saved(sender, instance, created, **kwargs) -> None:
    before = instance.__dict__.pop("_audit_before", None)
    if created:
        audit.record(
            "group.created",
            **_actor(),
            target=instance,
            summary=f"Group {instance.name} created{_by()}",
            changes={"name": [None, instance.name]},
        )
    elif before is not None and before["name"] != instance.name:
        audit.record(
            "group.changed",
            **_actor(),
            target=instance,
            summary=f"Group {before['name']} renamed to {instance.name}{_by()}",
            changes={"name": [before["name"], instance.name]},
        )


@receiver(pre_delete, sender=Group)
def remember_group_before_delete(sender, instance, **kwargs) -> None:
    # Its members lose it and its permissions without an m2m signal: the deletion event names both.
    instance._audit_deleted = {
        "members": sorted(instance.user_set.values_list("username", flat=True)),
        "permissions": _related_names(instance, "permissions", _permission_label),
    }


@receiver(post_delete, sender=Group)
def audit_group_deleted(sender, instance, **kwargs) -> None:
    lost = instance.__dict__.pop("_audit_deleted", {})
    audit.record(
        "group.deleted",
        **_actor(),
        target=instance,
        target_id=instance.pk,
        summary=f"Group {instance.name} deleted{_by()}",
        changes={"name": [instance.name, None], **{key: [value, None] for key, value in lost.items()}},
    )


def _permission_label(permission: Permission) -> str:
    return f"{permission.content_type.app_label}.{permission.codename}"


# through model -> (owner model, its field, the action, how a related object is named)
M2M_AUDITED = {
    User.groups.through: (User, "groups", "user.groups_changed", lambda group: group.name),
    User.user_permissions.through: (User, "user_permissions", "user.permissions_changed", _permission_label),
    Group.permissions.through: (Group, "permissions", "group.permissions_changed", _permission_label),
}


def _related_names(owner, field: str, label) -> list[str]:
    related = getattr(owner, field).all()
    if field != "groups":
        related = related.select_related("content_type")
    return sorted(label(obj) for obj in related)


def _owners(owner_model, instance, reverse: bool, pk_set, field: str) -> list:
    if not reverse:
        return [instance]
    if pk_set is None:  # clear() from the other side: every owner related to it now
        return list(owner_model.objects.filter(**{field: instance}))
    return list(owner_model.objects.filter(pk__in=pk_set))


def _m2m_changed(sender, instance, action, reverse, model, pk_set, **kwargs) -> None:
    owner_model, field, audit_action, label = M2M_AUDITED[sender]
    if action in ("pre_add", "pre_remove", "pre_clear"):
        owners = _owners(owner_model, instance, reverse, pk_set, field)
        # Kept on the instance the call was made on, for the post_ signal of the same call.
        instance._audit_m2m_before = {owner.pk: (owner, _related_names(owner, field, label)) for owner in owners}
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    for owner, before in instance.__dict__.pop("_audit_m2m_before", {}).values():
        after = _related_names(owner, field, label)
        if after == before:
            continue
        added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
        words = "; ".join(
            part
            for part in (
                f"added {', '.join(added)}" if added else "",
                f"removed {', '.join(removed)}" if removed else "",
            )
            if part
        )
        kind = "User" if owner_model is User else "Group"
        audit.record(
            audit_action,
            **_actor(),
            target=owner,
            summary=f"{kind} {owner}: {field.replace('_', ' ')} {words}{_by()}"[:500],
            changes={field: [before, after]},
        )


for _through in M2M_AUDITED:
    m2m_changed.connect(_m2m_changed, sender=_through, dispatch_uid=f"audit-m2m-{_through._meta.label}")
