"""Who may see and do what. Every queryset a view touches comes from here.

Rules: a user sees only the teams they are a member of; another team's object is a 404 (we do not
confirm it exists); a member without the needed role gets a 403 that names the role.
Responders draft, edit, submit and withdraw. Approvers do that and review others' work. Auditors read
everything of their team, including the audit log, and change nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias, TypeVar

from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.db.models import Model, Q, QuerySet
from django.shortcuts import get_object_or_404

from .models import AuditEvent, Draft, Incident, Membership, Publication, Role, Service, Team

# Whoever a request is for (``request.user``): signed in, or not.
Viewer: TypeAlias = User | AnonymousUser
_M = TypeVar("_M", bound=Model)
_ROLES_CACHE = "_roles_by_team"
_MEMBERSHIPS_CACHE = "_membership_list"

DRAFTING_ROLES = (Role.RESPONDER, Role.APPROVER)
REVIEWING_ROLES = (Role.APPROVER,)
AUDIT_ROLES = (Role.AUDITOR, Role.APPROVER)
ALL_ROLES = tuple(Role)


class RoleRequired(PermissionDenied):
    """A member of the team lacks the role an action needs. Rendered as a 403 naming the role."""

    def __init__(self, roles: Iterable[str], team: Team | None = None, action: str = "do this"):
        self.roles = tuple(roles)
        self.team = team
        names = " or ".join(Role(role).label.lower() for role in self.roles)
        where = f" in {team.name}" if team is not None else ""
        super().__init__(f"To {action} you need the {names} role{where}.")


def memberships(user: Viewer) -> QuerySet[Membership]:
    if not user.is_authenticated:
        return Membership.objects.none()
    return Membership.objects.filter(user=user).select_related("team")


def membership_list(user: Viewer) -> list[Membership]:
    """The user's memberships with their teams (team name order), read once per request: cached on the user
    object, which the auth middleware loads afresh for every request. The navigation shows them and every role
    check reads them (``roles_by_team``), so a page asks the database once for both."""
    if not user.is_authenticated:
        return []
    cached: list[Membership] | None = getattr(user, _MEMBERSHIPS_CACHE, None)
    if cached is None:
        cached = list(memberships(user))
        setattr(user, _MEMBERSHIPS_CACHE, cached)
    return cached


def roles_by_team(user: Viewer) -> dict[int, str]:
    """``{team_id: role}``, cached on the user object for the request."""
    cached: dict[int, str] | None = getattr(user, _ROLES_CACHE, None)
    if cached is None:
        cached = {membership.team_id: membership.role for membership in membership_list(user)}
        setattr(user, _ROLES_CACHE, cached)
    return cached


def role_in(user: Viewer, team: Team | int) -> str | None:
    team_id = team if isinstance(team, int) else team.pk
    return roles_by_team(user).get(team_id)


def has_role(user: Viewer, team: Team | int, roles: Iterable[str]) -> bool:
    return role_in(user, team) in tuple(roles)


def require_role(user: Viewer, team: Team, roles: Iterable[str], action: str = "do this") -> None:
    roles = tuple(roles)
    if not has_role(user, team, roles):
        raise RoleRequired(roles, team, action)


def team_ids(user: Viewer, roles: Iterable[str] = ALL_ROLES) -> list[int]:
    roles = tuple(roles)
    return [team_id for team_id, role in roles_by_team(user).items() if role in roles]


def teams(user: Viewer, roles: Iterable[str] = ALL_ROLES) -> QuerySet[Team]:
    return Team.objects.filter(pk__in=team_ids(user, roles))


def services(user: Viewer, roles: Iterable[str] = ALL_ROLES) -> QuerySet[Service]:
    return Service.objects.filter(team_id__in=team_ids(user, roles)).select_related("team")


def incidents(user: Viewer) -> QuerySet[Incident]:
    return Incident.objects.filter(service__team_id__in=team_ids(user)).select_related("service", "service__team")


def drafts(user: Viewer) -> QuerySet[Draft]:
    return Draft.objects.filter(team_id__in=team_ids(user)).select_related(
        "team", "service", "incident", "author", "last_editor"
    )


def publications(user: Viewer) -> QuerySet[Publication]:
    return Publication.objects.filter(team_id__in=team_ids(user)).select_related(
        "draft", "revision", "incident", "team"
    )


def audit_events(user: Viewer) -> QuerySet[AuditEvent]:
    """Events of the teams where the user audits or approves. Team-less events (logins) are staff-only."""
    return AuditEvent.objects.filter(team_id__in=team_ids(user, AUDIT_ROLES))


def can_read_audit_log(user: Viewer) -> bool:
    return bool(team_ids(user, AUDIT_ROLES))


def get_scoped_or_404(queryset: QuerySet[_M], **lookup: Any) -> _M:
    """Fetch one object from an already scoped queryset; outside the user's teams it does not exist."""
    return get_object_or_404(queryset, **lookup)


# --- The audit-log pages ----------------------------------------------------------------------------------
def audit_log_events(user: Viewer) -> QuerySet[AuditEvent]:
    """What the audit-log pages show: ``audit_events(user)``, plus team-less events (sign-ins) for staff."""
    if user.is_authenticated and user.is_staff:
        return AuditEvent.objects.filter(Q(team_id__in=team_ids(user, AUDIT_ROLES)) | Q(team_id__isnull=True))
    return audit_events(user)


def can_open_audit_log(user: Viewer) -> bool:
    """Auditors and approvers of a team; staff too, for the team-less events only they may read."""
    return can_read_audit_log(user) or bool(user.is_authenticated and user.is_staff)
