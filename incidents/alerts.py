"""Drafts from alerts: the only code that writes a team's alert webhook, its label mappings, the alerts it acted
on and its rate-limit counters.

A team's webhook (``/hooks/alerts/<team id>/``) answers to a bearer token whose SHA-256 alone is stored; an
approver rotates it and sees the new token once. A request is counted first (a fixed-window counter per team in
Postgres, ``count_request``: requests with the right token and the rest apart), then its token is compared in
constant time, then its body is read (bounded) and parsed whole (``parse``: Alertmanager's webhook format,
version 4, or the generic format of the README) before anything is written. Then, in one transaction:

- a **firing** alert whose labels match one of the team's mappings becomes a *draft* (never a submission, never
  a publication) for the mapped service, written by the team's system author (an inactive user that cannot sign
  in, hold a role or review; ``workflow.create_for_system_author``); the team's responders and approvers are
  emailed a link;
- a **resolved** alert whose firing alert made a draft that was published proposes a resolve draft (an update,
  stage ``resolved``) for that incident;
- every alert is recorded once per (team, fingerprint, kind): a unique constraint makes a second delivery, even a
  concurrent one, a ``duplicate`` that makes nothing.

Every step is audited: the delivery received (with each alert's outcome) or refused (token, size, body), the
rate limit reached (once per window), each draft made (``draft.created``), a token rotated, a mapping changed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.text import slugify

from . import access, audit, draft_templates, notifications, workflow
from .models import (
    ALERT_FINGERPRINT_MAX_LENGTH,
    ALERT_LABEL_NAME_MAX_LENGTH,
    DESCRIPTION_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    AlertDelivery,
    AlertKind,
    AlertRoute,
    AlertWebhook,
    DraftKind,
    Incident,
    Publication,
    PublicationState,
    Service,
    Severity,
    Stage,
    Team,
    TemplateKind,
)

TOKEN_PREFIX = "isdown_alerts_"  # noqa: S105 - a prefix that says what a token is for, not a secret
MAX_ALERTS = 100
MAX_LABELS = 64
SOURCE_MAX_LENGTH = 100
STARTS_AT_MAX_LENGTH = 39
LABEL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Alert labels that say the alert is worth a "major" incident; anything else drafts a "minor" one.
MAJOR_SEVERITIES = frozenset({"critical", "major", "page", "error", "high"})
ACCEPTED, REFUSED = "accepted", "refused"


class AlertError(Exception):
    """A refused change to the webhook's settings; the message is for the person who clicked."""


class BadPayload(ValueError):
    """The body is not an alert this webhook understands; the message says what is wrong with it."""


# --- The payload ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Alert:
    """One alert of a delivery, whatever its format. ``key`` is what dedupes it: the sender's fingerprint, plus
    for Alertmanager the start of this firing (the same fingerprint firing again later is a new alert)."""

    source: str
    status: str
    fingerprint: str
    key: str
    labels: dict[str, str] = field(default_factory=dict)
    title: str = ""
    description: str = ""


def _text(value: Any, where: str, *, limit: int, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BadPayload(f"{where} must be a string.")
    if "\x00" in value:
        raise BadPayload(f"{where} contains a NUL character.")
    if required and not value.strip():
        raise BadPayload(f"{where} is required and must not be empty.")
    if len(value) > limit:
        raise BadPayload(f"{where} is longer than {limit} characters.")
    return value


def _labels(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadPayload(f"{where} must be an object of strings.")
    if len(value) > MAX_LABELS:
        raise BadPayload(f"{where} has more than {MAX_LABELS} labels.")
    labels = {}
    for name, label in value.items():
        _text(name, f"{where}: a label name", limit=ALERT_LABEL_NAME_MAX_LENGTH)
        labels[name] = _text(label, f"{where}.{name[:40]}", limit=DESCRIPTION_MAX_LENGTH, required=False)
    return labels


def _status(value: Any, where: str) -> str:
    if value not in AlertKind.values:
        raise BadPayload(f'{where} must be "firing" or "resolved".')
    return str(value)


def _alertmanager(payload: dict[str, Any]) -> list[Alert]:
    if payload.get("version") != "4":
        raise BadPayload('Only version "4" of Alertmanager\'s webhook format is understood ("version": "4").')
    items = payload["alerts"]
    if not isinstance(items, list) or not items:
        raise BadPayload('"alerts" must be a non-empty list.')
    if len(items) > MAX_ALERTS:
        raise BadPayload(f'"alerts" holds more than {MAX_ALERTS} alerts; send them in smaller groups.')
    receiver = payload.get("receiver")
    source = "Alertmanager" + (f" ({receiver[:60]})" if isinstance(receiver, str) and receiver.strip() else "")
    source = _text(source, '"receiver"', limit=SOURCE_MAX_LENGTH)
    alerts = []
    for n, item in enumerate(items):
        where = f"alerts[{n}]"
        if not isinstance(item, dict):
            raise BadPayload(f"{where} must be an object.")
        labels = _labels(item.get("labels"), f"{where}.labels")
        annotations = _labels(item.get("annotations"), f"{where}.annotations")
        fingerprint = _text(
            item.get("fingerprint"), f"{where}.fingerprint", limit=ALERT_FINGERPRINT_MAX_LENGTH, required=True
        )
        starts_at = _text(item.get("startsAt"), f"{where}.startsAt", limit=STARTS_AT_MAX_LENGTH)
        alerts.append(
            Alert(
                source=source,
                status=_status(item.get("status"), f"{where}.status"),
                fingerprint=fingerprint,
                key=f"{fingerprint}@{starts_at}" if starts_at else fingerprint,
                labels=labels,
                title=annotations.get("summary") or labels.get("alertname") or "Alert",
                description=annotations.get("description") or annotations.get("message") or "",
            )
        )
    return alerts


def _generic(payload: dict[str, Any]) -> list[Alert]:
    fingerprint = _text(payload.get("fingerprint"), '"fingerprint"', limit=ALERT_FINGERPRINT_MAX_LENGTH, required=True)
    return [
        Alert(
            source=_text(payload.get("source"), '"source"', limit=SOURCE_MAX_LENGTH, required=True),
            status=_status(payload.get("status"), '"status"'),
            fingerprint=fingerprint,
            key=fingerprint,
            labels=_labels(payload.get("labels"), '"labels"'),
            title=_text(payload.get("title"), '"title"', limit=DESCRIPTION_MAX_LENGTH),
            description=_text(payload.get("description"), '"description"', limit=DESCRIPTION_MAX_LENGTH),
        )
    ]


def parse(body: bytes) -> list[Alert]:
    """Every alert of a delivery, or BadPayload naming the first problem: nothing is acted on unless all of it
    is understood."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadPayload("The body must be UTF-8 JSON.") from None
    except (ValueError, RecursionError):
        raise BadPayload("The body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise BadPayload("The body must be a JSON object.")
    if "alerts" in payload:
        return _alertmanager(payload)
    return _generic(payload)


# --- The draft's words ------------------------------------------------------------------------------------------------
def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _draft_fields(alert: Alert, service: Service, incident: Incident | None = None) -> dict[str, str]:
    """The words an alert proposes: for a firing alert a new incident, for a resolved one the resolving update of
    ``incident``. The only place they are written. The team's template (the first of its kind by name:
    draft_templates.py) wins wherever it has words, filled by plain substitution; the alert fills the rest."""
    team = service.team
    if alert.status == AlertKind.RESOLVED:
        # The resolve goes to every open service of a grouped incident: name them all.
        names = draft_templates.values_for(team=team, incident=incident)["services"] if incident else service.name
        fields = {
            "title": "",
            "severity": "",
            "stage": Stage.RESOLVED,
            "description": f"The issue affecting {names} has been resolved.",
        }
        resolve = draft_templates.resolve_default(team, incident) if incident is not None else None
        if resolve is not None:
            fields.update({name: value for name, value in resolve.items() if value and name != "title"})
        fields["stage"] = Stage.RESOLVED
        return fields
    severity = Severity.MAJOR if alert.labels.get("severity", "").lower() in MAJOR_SEVERITIES else Severity.MINOR
    description = alert.description.strip() or f"We are investigating an issue affecting {service.name}."
    fields = {
        "title": _one_line(alert.title, TITLE_MAX_LENGTH) or f"Issue affecting {service.name}",
        "severity": severity,
        "stage": Stage.INVESTIGATING,
        "description": description[:DESCRIPTION_MAX_LENGTH],
    }
    template = draft_templates.for_team(team, TemplateKind.OPEN).first()
    if template is not None:
        filled = draft_templates.fill(template, draft_templates.values_for(team=team, services=[service]))
        fields.update({name: value for name, value in filled.items() if value})
    return fields


# --- Tokens -----------------------------------------------------------------------------------------------------------
def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogateescape")).hexdigest()


def bearer_token(header: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or "" (a header of another kind is no token)."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def token_matches(webhook: AlertWebhook | None, presented: str) -> bool:
    """Constant time: the presented token's SHA-256 against the stored one (a digest is compared even when there
    is no token to compare with, so the answer takes as long either way)."""
    stored = webhook.token_sha256 if webhook is not None and webhook.token_sha256 else ""
    matches = hmac.compare_digest(_sha256(presented), stored or "0" * 64)
    return bool(stored) and bool(presented) and matches


def _system_user(team: Team) -> User:
    """The team's system author: inactive, without a usable password or a membership."""
    users = get_user_model()
    name = f"alerts@{slugify(team.name)[:100] or team.pk}"
    if users.objects.filter(username=name).exists():
        name = f"alerts@team-{team.pk}"
    user = users(username=name, first_name="Alerts", last_name=team.name[:150], is_active=False)
    user.set_unusable_password()
    user.save()
    return user


def rotate_token(*, team: Team, user: User) -> str:
    """Approver: a new token for the team's webhook (the old one stops working at once). Returns the token, which
    is stored nowhere: show it once."""
    access.require_role(user, team, access.REVIEWING_ROLES, action="rotate the alert webhook's token")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        Team.objects.select_for_update(no_key=True).filter(pk=team.pk).first()
        webhook = AlertWebhook.objects.filter(team=team).first()
        if webhook is None:
            webhook = AlertWebhook(team=team, system_user=_system_user(team))
        before = webhook.token_sha256[:8] or None
        webhook.token_sha256 = _sha256(token)
        webhook.rotated_at = timezone.now()
        webhook.rotated_by = user
        webhook.save()
        audit.record(
            "alert.token_rotated",
            actor=user,
            team=team,
            target=webhook,
            summary=f"{user.get_username()} rotated the alert webhook's token of {team.name}",
            # The first characters of each token's SHA-256: tells tokens apart, reveals nothing.
            changes={"token_sha256": [before, webhook.token_sha256[:8]]},
        )
    return token


# --- Mappings ---------------------------------------------------------------------------------------------------------
def add_route(*, team: Team, user: User, label_name: str, label_value: str, service: Service) -> AlertRoute:
    """Approver: alerts whose label ``label_name`` is ``label_value`` draft for ``service`` (one of the team's)."""
    access.require_role(user, team, access.REVIEWING_ROLES, action="change the alert mappings")
    if service.team_id != team.pk:
        raise AlertError("That service belongs to another team.")
    with transaction.atomic():
        Team.objects.select_for_update(no_key=True).filter(pk=team.pk).first()
        if AlertRoute.objects.filter(team=team, label_name=label_name, label_value=label_value).exists():
            raise AlertError(f'Alerts with {label_name}="{label_value}" are mapped already; remove that mapping first.')
        route = AlertRoute.objects.create(team=team, label_name=label_name, label_value=label_value, service=service)
        audit.record(
            "alert.route_added",
            actor=user,
            team=team,
            target=route,
            summary=f"{user.get_username()} mapped alerts with {route}",
            changes={"mapping": [None, str(route)]},
        )
    return route


def remove_route(*, team: Team, user: User, route_id: int) -> None:
    access.require_role(user, team, access.REVIEWING_ROLES, action="change the alert mappings")
    with transaction.atomic():
        route = AlertRoute.objects.select_for_update().select_related("service").filter(team=team, pk=route_id).first()
        if route is None:
            raise AlertError("That mapping does not exist any more.")
        label = str(route)
        audit.record(
            "alert.route_removed",
            actor=user,
            team=team,
            target=route,
            summary=f"{user.get_username()} removed the alert mapping {label}",
            changes={"mapping": [label, None]},
        )
        route.delete()


def route_for(routes: list[AlertRoute], labels: dict[str, str]) -> AlertRoute | None:
    """The first mapping (by label name, value, id) whose label the alert carries with that value."""
    for route in routes:
        if labels.get(route.label_name) == route.label_value:
            return route
    return None


# --- The rate limit ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Count:
    count: int
    retry_after: int

    @property
    def over(self) -> bool:
        return self.count > settings.ALERTS_RATE_LIMIT

    @property
    def first_over(self) -> bool:
        return self.count == settings.ALERTS_RATE_LIMIT + 1


def count_request(*, team: Team, bucket: str, now: datetime | None = None) -> Count:
    """Count one request in the team's current window, atomically (one INSERT … ON CONFLICT … RETURNING, committed
    at once whatever happens next): the count so far in this window, and the seconds until it ends."""
    now = now or timezone.now()
    window = settings.ALERTS_RATE_WINDOW
    start = datetime.fromtimestamp(math.floor(now.timestamp() / window) * window, tz=UTC)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO incidents_alertratewindow (team_id, bucket, window_start, count) VALUES (%s, %s, %s, 1)
            ON CONFLICT (team_id, bucket) DO UPDATE SET
                count = CASE WHEN incidents_alertratewindow.window_start = EXCLUDED.window_start
                             THEN incidents_alertratewindow.count + 1 ELSE 1 END,
                window_start = EXCLUDED.window_start
            RETURNING count, window_start
            """,
            [team.pk, bucket, start],
        )
        count, window_start = cursor.fetchone()
    ends = window_start + timedelta(seconds=window)
    return Count(count=count, retry_after=max(1, math.ceil((ends - now).total_seconds())))


# --- Refusals, recorded -----------------------------------------------------------------------------------------------
def record_refusal(*, team: Team, reason: str, status: int) -> None:
    with transaction.atomic():
        audit.record(
            "alert.refused",
            actor_label="alerts:webhook",
            team=team,
            summary=f"Alert webhook of {team.name} refused a delivery ({status}): {reason[:200]}",
            context={"status": status},
        )


def record_rate_limited(*, team: Team, bucket: str, retry_after: int) -> None:
    with transaction.atomic():
        audit.record(
            "alert.rate_limited",
            actor_label="alerts:webhook",
            team=team,
            summary=f"Alert webhook of {team.name} reached its limit of {settings.ALERTS_RATE_LIMIT} {bucket} "
            f"requests per {settings.ALERTS_RATE_WINDOW} s; refused for {retry_after} s",
            context={"bucket": bucket},
        )


# --- Acting on alerts -------------------------------------------------------------------------------------------------
def receive(*, team: Team, alerts: list[Alert]) -> list[dict[str, Any]]:
    """Act on every alert of one delivery, in one transaction; one outcome per alert, in order."""
    webhook = AlertWebhook.objects.select_related("system_user").get(team=team)
    routes = list(AlertRoute.objects.filter(team=team).select_related("service", "service__team"))
    with transaction.atomic():
        outcomes = [_act(team=team, webhook=webhook, routes=routes, alert=alert) for alert in alerts]
        made = sum(1 for outcome in outcomes if outcome["outcome"] == "draft_created")
        sources = sorted({alert.source for alert in alerts})
        audit.record(
            "alert.received",
            actor_label=f"alerts:{sources[0]}"[:150],
            team=team,
            summary=f"Alert webhook of {team.name} received {len(alerts)} alert(s) from {', '.join(sources)[:120]}: "
            f"{made} draft(s) made",
            context={"alerts": outcomes[:MAX_ALERTS]},
        )
    return outcomes


def _act(*, team: Team, webhook: AlertWebhook, routes: list[AlertRoute], alert: Alert) -> dict[str, Any]:
    base: dict[str, Any] = {"fingerprint": alert.fingerprint, "status": alert.status}
    if alert.status == AlertKind.FIRING:
        route = route_for(routes, alert.labels)
        if route is None:
            names = ", ".join(sorted(alert.labels)[:10]) or "none"
            return {
                **base,
                "outcome": "unmapped",
                "detail": f"No alert mapping of {team.name} matches this alert's labels ({names}); no draft was made.",
            }
        service = route.service
        firing = None
    else:
        firing = (
            AlertDelivery.objects.filter(team=team, fingerprint=alert.key, kind=AlertKind.FIRING)
            .exclude(draft=None)
            .select_related("draft", "service", "service__team")
            .first()
        )
        if firing is None:
            return {
                **base,
                "outcome": "unknown_alert",
                "detail": "No firing alert with this fingerprint made a draft here: there is nothing to resolve.",
            }
        service = firing.service
    delivery = _claim(team=team, alert=alert, service=service)
    if isinstance(delivery, dict):
        return {**base, **delivery}
    incident = None
    kind = DraftKind.OPEN
    if firing is not None:
        incident, note = _open_incident_of(firing)
        if incident is None:
            delivery.note = note[:300]
            delivery.save(update_fields=["note"])
            return {**base, "outcome": "not_proposed", "detail": note}
        kind = DraftKind.UPDATE
        service = incident.service  # a draft keeps its incident's service (one of a group's may be resolved)
    draft = workflow.create_for_system_author(
        author=webhook.system_user,
        service=service,
        kind=kind,
        fields=_draft_fields(alert, service, incident),
        incident=incident,
        summary=f"An alert from {alert.source} ({alert.status}, {alert.fingerprint[:40]}) proposed a "
        f"{'resolve' if incident else 'new incident'} draft for {service.name}",
    )
    delivery.draft = draft
    delivery.save(update_fields=["draft"])
    notifications.alert_draft_proposed(draft, source=alert.source)
    return {**base, "outcome": "draft_created", "draft": draft.pk}


def _claim(*, team: Team, alert: Alert, service: Service) -> AlertDelivery | dict[str, Any]:
    """Record the alert once: a second delivery (a repeat, or a concurrent twin that committed first) meets the
    unique constraint and is told which draft the first one made."""
    try:
        with transaction.atomic():
            return AlertDelivery.objects.create(
                team=team,
                fingerprint=alert.key,
                kind=alert.status,
                source=alert.source,
                service=service,
                labels=dict(list(alert.labels.items())[:MAX_LABELS]),
            )
    except IntegrityError:
        first = AlertDelivery.objects.filter(team=team, fingerprint=alert.key, kind=alert.status).first()
        return {
            "outcome": "duplicate",
            "draft": first.draft_id if first is not None else None,
            "detail": "This alert was delivered before; nothing new was made.",
        }


def _open_incident_of(firing: AlertDelivery) -> tuple[Incident | None, str]:
    """The IsDown incident the firing alert's draft opened, if it is published and still open; else why not. A draft
    that opened several (one per service, grouped) resolves through any still open one: the resolve fans out to every
    open service of the group, so one removed from it meanwhile does not stop it."""
    draft = firing.draft
    assert draft is not None
    published = list(
        Publication.objects.filter(draft=draft, state=PublicationState.PUBLISHED)
        .exclude(incident=None)
        .select_related("incident")
        .order_by("pk")
    )
    if not published:
        return None, (
            f"The alert resolved, but its draft #{draft.pk} is not on IsDown ({draft.get_state_display().lower()}): "
            "no resolve draft was proposed; discard or finish that draft."
        )
    incidents = [p.incident for p in published if p.incident is not None]
    still_open = [incident for incident in incidents if not incident.resolved]
    if not still_open:
        groups = {incident.group_id for incident in incidents if incident.group_id is not None}
        still_open = list(
            Incident.objects.filter(group_id__in=groups, resolved=False, remote_id__isnull=False).order_by("pk")
        )
    if not still_open:
        return None, f"The incident of draft #{draft.pk} is resolved already: no resolve draft was proposed."
    return still_open[0], ""
