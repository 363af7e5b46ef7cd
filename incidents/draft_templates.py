"""A team's draft templates: their placeholders, how a template fills a draft's fields, and the one writer of
``DraftTemplate`` (create, change, delete: approvers only, each audited with its field changes).

Filling is plain substitution: each placeholder of the fixed list ``PLACEHOLDERS`` (``{services}``) is replaced
with ``str.replace``. Text an approver wrote never reaches a template engine, so it cannot read or run anything;
a placeholder that is not in the list, or has no value here, stays as typed and the public-text lint flags it.
Other callers (a draft made from an alert) use ``for_team``, ``values_for`` and ``fill`` as the form does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from . import access, audit
from .models import DraftTemplate, Incident, Service, Stage, Team, TemplateKind

# Every placeholder a template may use, with what it becomes. The only names ever substituted.
PLACEHOLDERS: dict[str, str] = {
    "services": "The names of the affected services, comma-separated",
    "incident_title": "The incident's title (updates and resolves)",
    "started_at": "When the incident started (the time IsDown gave it, else now)",
    "now": "The time the template is picked",
    "team": "The team's name",
}
TEMPLATE_FIELDS = ("title", "severity", "stage", "description")
# The fields whose text is substituted (severity and stage are choices).
TEXT_FIELDS = ("title", "description")
TIME_FORMAT = "%Y-%m-%d %H:%M %Z"


class TemplateError(Exception):
    """A refused change to a template; the message is for the approver who asked."""


def fill(template: DraftTemplate | Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """The template's fields with each known placeholder replaced by its value (``values`` keys are placeholder
    names without braces). Unknown placeholders, and known ones without a value, are left as they are."""
    fields = {
        name: str((template.get(name) if isinstance(template, Mapping) else getattr(template, name, "")) or "")
        for name in TEMPLATE_FIELDS
    }
    for name in TEXT_FIELDS:
        text = fields[name]
        for key, value in values.items():
            if key in PLACEHOLDERS:
                text = text.replace("{" + key + "}", str(value))
        fields[name] = text
    return fields


def values_for(
    *, team: Team, services: Iterable[Service] = (), incident: Incident | None = None, now: datetime | None = None
) -> dict[str, str]:
    """The placeholder values for a draft of ``team``: about ``incident`` (an update) or ``services`` (a new one).
    ``{services}`` names ``services`` when given (a new incident's, a service added to or removed from an incident),
    else every open service an update of ``incident`` goes to (a grouped incident: each open member's)."""
    now = timezone.localtime(now or timezone.now())
    names = [service.name for service in services]
    if not names and incident is not None:
        names = _open_service_names(incident)
    values = {"team": team.name, "now": now.strftime(TIME_FORMAT), "started_at": now.strftime(TIME_FORMAT)}
    if names:
        values["services"] = ", ".join(names)
    if incident is not None:
        values["incident_title"] = incident.title
        started = incident.remote_created_at or incident.created_at
        if started is not None:
            values["started_at"] = timezone.localtime(started).strftime(TIME_FORMAT)
    return values


def _open_service_names(incident: Incident) -> list[str]:
    """The services an update of ``incident`` reaches: its group's open, published incidents (as
    workflow.open_members), or the incident's own service."""
    if incident.group_id is None:
        return [incident.service.name]
    names = list(
        Incident.objects.filter(group_id=incident.group_id, resolved=False, remote_id__isnull=False)
        .order_by("service__name", "pk")
        .values_list("service__name", flat=True)
    )
    return list(dict.fromkeys(names)) or [incident.service.name]


def for_team(team: Team | int, kind: str) -> QuerySet[DraftTemplate]:
    """The team's templates of one kind (``TemplateKind``), by name."""
    team_id = team if isinstance(team, int) else team.pk
    return DraftTemplate.objects.filter(team_id=team_id, kind=kind).order_by("name")


def resolve_default(team: Team, incident: Incident) -> dict[str, str] | None:
    """The team's resolve template (the first by name), filled for ``incident``; None if it has none."""
    template = for_team(team, TemplateKind.RESOLVE).first()
    if template is None:
        return None
    fields = fill(template, values_for(team=team, incident=incident))
    fields["stage"] = Stage.RESOLVED
    return fields


def pickable(user: access.Viewer, team_ids: Iterable[int], kinds: Iterable[str]) -> QuerySet[DraftTemplate]:
    """Templates ``user`` may pick: of ``kinds``, of those teams where they draft."""
    drafting = set(access.team_ids(user, access.DRAFTING_ROLES))
    return (
        DraftTemplate.objects.filter(team_id__in=[t for t in team_ids if t in drafting], kind__in=list(kinds))
        .select_related("team")
        .order_by("team__name", "name")
    )


# --- The one writer -----------------------------------------------------------------------------------------------
def _snapshot(template: DraftTemplate) -> dict[str, str]:
    return {name: getattr(template, name) for name in ("name", "kind", *TEMPLATE_FIELDS)}


def _locked(template_id: int, team: Team) -> DraftTemplate:
    template = DraftTemplate.objects.select_for_update().filter(pk=template_id, team=team).first()
    if template is None:
        raise TemplateError("This template was deleted meanwhile.")
    return template


def _name_taken(team: Team, name: str, exclude: int | None = None) -> bool:
    same = DraftTemplate.objects.filter(team=team, name__iexact=name)
    return (same if exclude is None else same.exclude(pk=exclude)).exists()


def create(*, user, team: Team, fields: Mapping[str, str]) -> DraftTemplate:
    """A new template for ``team`` (approvers only), audited with every field it starts with."""
    access.require_role(user, team, access.REVIEWING_ROLES, action="manage templates")
    with transaction.atomic():
        Team.objects.select_for_update().filter(pk=team.pk).first()  # names are unique per team: one at a time
        if _name_taken(team, fields["name"]):
            raise TemplateError(f"{team.name} already has a template named “{fields['name']}”.")
        template = DraftTemplate.objects.create(team=team, **{name: fields.get(name, "") for name in _FIELDS})
        audit.record(
            "template.created",
            actor=user,
            team=team,
            target=template,
            summary=f"{user.get_username()} created template “{template.name}” of {team.name}",
            changes=audit.field_changes({}, _snapshot(template)),
        )
    return template


def update(*, user, template_id: int, team: Team, fields: Mapping[str, str]) -> DraftTemplate:
    """Change a template of ``team`` (approvers only); the audit event records each field's old and new value."""
    access.require_role(user, team, access.REVIEWING_ROLES, action="manage templates")
    with transaction.atomic():
        template = _locked(template_id, team)
        if _name_taken(team, fields["name"], exclude=template.pk):
            raise TemplateError(f"{team.name} already has a template named “{fields['name']}”.")
        before = _snapshot(template)
        for name in _FIELDS:
            setattr(template, name, fields.get(name, ""))
        changes = audit.field_changes(before, _snapshot(template))
        if not changes:
            return template
        template.save()
        audit.record(
            "template.changed",
            actor=user,
            team=team,
            target=template,
            summary=f"{user.get_username()} changed template “{template.name}” of {team.name}",
            changes=changes,
        )
    return template


def delete(*, user, template_id: int, team: Team) -> None:
    """Delete a template of ``team`` (approvers only); the audit event keeps every field it had."""
    access.require_role(user, team, access.REVIEWING_ROLES, action="manage templates")
    with transaction.atomic():
        template = _locked(template_id, team)
        audit.record(
            "template.deleted",
            actor=user,
            team=team,
            target=template,
            summary=f"{user.get_username()} deleted template “{template.name}” of {team.name}",
            changes=audit.field_changes(_snapshot(template), {}),
        )
        template.delete()


_FIELDS = ("name", "kind", *TEMPLATE_FIELDS)
