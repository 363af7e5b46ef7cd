"""The audit-log pages: filter, keyset-paginate, export and verify the chain; and one object's history.

Everything read here comes from ``access.audit_log_events(user)``: the events of the teams where the user
audits or approves (plus team-less sign-in events for staff). Pages never OFFSET and never COUNT: they walk
``seq`` from a cursor (``?before=`` / ``?after=``), which the ``(team_id, -seq)``, ``(actor_id, -seq)`` and
``(target_type, target_id, -seq)`` indexes serve directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_POST

from .. import access, audit
from ..models import AuditEvent, Team

PAGE_SIZE = 50
EXPORT_CHUNK_ROWS = 2000
NO_TEAM = "none"
FILTER_NAMES = ("team", "actor", "action", "target_type", "target_id", "target", "since", "until")
TEMPLATE = "incidents/audit_log.html"
DATETIME_HELP = "Site time zone ({tz}); e.g. 2025-03-01 14:30."
SEQ_MAX = 2**63 - 1
_ACTION_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*\.?\*?$")


class AuditFilterForm(forms.Form):
    """The audit-log filters. Lives with its only view; the choices depend on the user's teams."""

    team = forms.ChoiceField(required=False, label="Team")
    actor = forms.CharField(required=False, max_length=150, label="Actor", help_text="Username")
    action = forms.CharField(
        required=False, max_length=64, label="Action", help_text="Exact (draft.submitted) or prefix (draft.)"
    )
    target_type = forms.CharField(required=False, max_length=40, label="Target type", help_text="e.g. draft")
    target_id = forms.CharField(required=False, max_length=64, label="Target id")
    target = forms.CharField(required=False, max_length=300, label="Target label contains")
    since = forms.DateTimeField(required=False, label="From")
    until = forms.DateTimeField(required=False, label="To", help_text="Up to the end of that minute")
    # A seq is a bigint: a larger cursor names no event.
    before = forms.IntegerField(required=False, min_value=1, max_value=SEQ_MAX, widget=forms.HiddenInput)
    after = forms.IntegerField(required=False, min_value=1, max_value=SEQ_MAX, widget=forms.HiddenInput)

    def __init__(self, data: Mapping[str, Any] | None, *, teams: Iterable[Team], include_no_team: bool):
        super().__init__(data)
        choices = [("", "All my teams"), *((str(team.pk), team.name) for team in teams)]
        if include_no_team:
            choices.append((NO_TEAM, "No team (sign-ins; staff only)"))
        self.fields["team"].choices = choices
        tz_help = DATETIME_HELP.format(tz=timezone.get_current_timezone_name())
        for name in ("since", "until"):
            self.fields[name].widget = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")
            self.fields[name].error_messages["invalid"] = "Enter a date and time, e.g. 2025-03-01 14:30."
        self.fields["since"].help_text = tz_help

    def clean_action(self) -> str:
        action = self.cleaned_data["action"].strip()
        if action and not _ACTION_RE.match(action):
            raise forms.ValidationError(
                "Actions are lower-case dotted names: draft.submitted, or draft. for every draft action."
            )
        return action

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for name in ("before", "after"):
            if name in self._errors:  # hidden fields: say it at the top of the form, plainly
                del self._errors[name]
                self.add_error(None, f"This page link is broken ({name}= must be a positive whole number).")
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("until", "“To” is before “From”.")
        if cleaned.get("before") and cleaned.get("after"):
            raise forms.ValidationError("A page link has both “before” and “after”; follow a link from the page.")
        return cleaned


@dataclass
class Page:
    events: list[AuditEvent]
    older_cursor: int | None = None  # the ``before=`` of the next older page, if there is one
    newer_cursor: int | None = None  # the ``after=`` of the next newer page, if there is one


@dataclass
class History:
    """What ``_history.html`` renders for one object (and, optionally, its related objects)."""

    visible: bool
    events: list[AuditEvent] = field(default_factory=list)
    truncated: bool = False
    more_url: str = ""


# --- Queries ------------------------------------------------------------------------------------------------
def _filter_form(user, data: Mapping[str, Any] | None) -> AuditFilterForm:
    return AuditFilterForm(
        data,
        teams=access.teams(user, access.AUDIT_ROLES).order_by("name"),
        include_no_team=bool(user.is_staff),
    )


def filtered_events(user, filters: Mapping[str, Any]) -> QuerySet[AuditEvent]:
    """The user's readable events narrowed by cleaned filter values. Unordered; callers page on ``seq``."""
    events = access.audit_log_events(user)
    team = filters.get("team")
    if team == NO_TEAM:
        events = events.filter(team_id__isnull=True)
    elif team:
        events = events.filter(team_id=int(team))
    if actor := (filters.get("actor") or "").strip():
        # A current username resolves to its id (indexed; survives renames); anything else (system:worker,
        # a deleted or renamed user) matches the name snapshot on the row.
        user_ids = list(get_user_model().objects.filter(username__iexact=actor).values_list("pk", flat=True))
        events = events.filter(actor_id__in=user_ids) if user_ids else events.filter(actor_label__iexact=actor)
    if action := filters.get("action"):
        prefix = action.rstrip("*")
        events = events.filter(action__startswith=prefix) if prefix.endswith(".") else events.filter(action=action)
    if target_type := (filters.get("target_type") or "").strip():
        events = events.filter(target_type=target_type.lower())
    if target_id := (filters.get("target_id") or "").strip():
        events = events.filter(target_id=target_id)
    if target := (filters.get("target") or "").strip():
        events = events.filter(target_label__icontains=target)
    if since := filters.get("since"):
        events = events.filter(created_at__gte=since)
    if until := filters.get("until"):
        # A datetime-local input names a minute; "to 14:30" includes 14:30:59.999999 (the last microsecond
        # PostgreSQL can store). Not "< 14:31": the minute after 9999-12-31 23:59 is not a date Python can hold.
        if until.second == 0 and until.microsecond == 0:
            until = until.replace(second=59, microsecond=999_999)
        events = events.filter(created_at__lte=until)
    return events


def keyset_page(
    events: QuerySet[AuditEvent], *, before: int | None = None, after: int | None = None, size: int = PAGE_SIZE
) -> Page:
    """One page, newest first, anchored on ``seq``: new events never shift an older page."""
    if after is not None:
        rows = list(events.filter(seq__gt=after).order_by("seq")[: size + 1])
        has_newer = len(rows) > size
        rows = rows[:size][::-1]
        has_older = bool(rows) and events.filter(seq__lt=rows[-1].seq).exists()
        if not rows:  # nothing newer than the cursor: show the page just below it instead of an empty one
            return keyset_page(events, before=after + 1, size=size)
    else:
        window = events.filter(seq__lt=before) if before is not None else events
        rows = list(window.order_by("-seq")[: size + 1])
        has_older = len(rows) > size
        rows = rows[:size]
        has_newer = before is not None and bool(rows) and events.filter(seq__gt=rows[0].seq).exists()
    return Page(
        events=rows,
        older_cursor=rows[-1].seq if has_older else None,
        newer_cursor=rows[0].seq if has_newer else None,
    )


def _display(value: Any) -> str:
    if value is None or value == "":
        return "∅"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def change_lines(event: AuditEvent) -> list[tuple[str, str, str]]:
    """``[(field, old, new)]`` as display text from ``{field: [old, new]}``; tolerant of odd shapes."""
    lines = []
    for name, pair in sorted((event.changes or {}).items()):
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            lines.append((str(name), _display(pair[0]), _display(pair[1])))
        else:
            lines.append((str(name), "", _display(pair)))
    return lines


def _decorate(events: list[AuditEvent]) -> list[AuditEvent]:
    for event in events:
        event.change_lines = change_lines(event)
    return events


def history_for(
    user,
    *,
    target_type: str,
    target_ids: Iterable[str | int],
    limit: int = PAGE_SIZE,
    also: Mapping[str, Iterable[str | int]] | None = None,
) -> History:
    """The scoped events about one object (``target_type`` + ``target_ids``) and, via ``also``, about
    related ones (e.g. an incident page passes ``also={"draft": draft_ids}``). Newest first, at most ``limit``.

    Only auditors and approvers of the team (and staff) see history, as with the audit log itself.
    """
    if not access.can_open_audit_log(user):
        return History(visible=False)
    wanted = {target_type: [str(i) for i in target_ids]}
    for other_type, ids in (also or {}).items():
        wanted.setdefault(other_type, []).extend(str(i) for i in ids)
    wanted = {kind: ids for kind, ids in wanted.items() if ids}
    if not wanted:
        return History(visible=True)
    # One indexed query per target type, merged: an OR across types would defeat the (type, id, -seq) index.
    events: list[AuditEvent] = []
    for kind, ids in wanted.items():
        query = access.audit_log_events(user).filter(target_type=kind, target_id__in=ids).order_by("-seq")
        events.extend(query[: limit + 1])
    events.sort(key=lambda event: event.seq, reverse=True)
    more_url = ""
    ids = wanted.get(target_type, [])
    if len(ids) == 1:
        more_url = reverse("incidents:audit_log") + "?" + urlencode({"target_type": target_type, "target_id": ids[0]})
    return History(visible=True, events=_decorate(events[:limit]), truncated=len(events) > limit, more_url=more_url)


# --- Helpers for the views ----------------------------------------------------------------------------------
def _require_audit_reader(user) -> None:
    if not access.can_open_audit_log(user):
        raise access.RoleRequired(access.AUDIT_ROLES, action="read the audit log")


def _filter_query(form: AuditFilterForm) -> dict[str, str]:
    """The submitted filters (raw text, non-empty only), to carry into page and export links."""
    return {name: form.data[name] for name in FILTER_NAMES if form.data.get(name)}


def _link(filters: Mapping[str, str], **extra: int | None) -> str:
    params = dict(filters)
    params.update({key: str(value) for key, value in extra.items() if value is not None})
    return "?" + urlencode(params) if params else "?"


def _describe_filters(form: AuditFilterForm) -> dict[str, str]:
    described = {}
    for name in FILTER_NAMES:
        value = form.cleaned_data.get(name)
        if value in (None, ""):
            continue
        if name == "team":
            value = dict(form.fields["team"].choices).get(value, value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        described[name] = str(value)
    return described


def _scope_teams(user, team_filter: str) -> list[Team | None]:
    """Teams whose events an action on the audit log touches: one audit event is written per team, so each
    team's auditors see it in their own log. ``None`` stands for the staff-only team-less events."""
    if team_filter == NO_TEAM:
        return [None]
    teams = access.teams(user, access.AUDIT_ROLES).order_by("pk")
    if team_filter:
        teams = teams.filter(pk=int(team_filter))
    scoped: list[Team | None] = list(teams)
    if not team_filter and user.is_staff:
        scoped.append(None)
    return scoped


def _render_page(request: HttpRequest, form: AuditFilterForm, *, status: int = 200) -> HttpResponse:
    page = None
    filters = _filter_query(form)
    if form.is_valid():
        events = filtered_events(request.user, form.cleaned_data)
        page = keyset_page(events, before=form.cleaned_data.get("before"), after=form.cleaned_data.get("after"))
        _decorate(page.events)
    else:
        status = 422
    context = {
        "form": form,
        "page": page,
        "filters_active": bool(filters),
        "older_link": _link(filters, before=page.older_cursor) if page and page.older_cursor else "",
        "newer_link": _link(filters, after=page.newer_cursor) if page and page.newer_cursor else "",
        "export_query": _link(filters),
        "page_size": PAGE_SIZE,
    }
    partial = request.htmx and not request.htmx.history_restore_request
    response = render(request, f"{TEMPLATE}#htmx_results" if partial else TEMPLATE, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


# --- Views --------------------------------------------------------------------------------------------------
@require_GET
def audit_log(request: HttpRequest) -> HttpResponse:
    _require_audit_reader(request.user)
    return _render_page(request, _filter_form(request.user, request.GET))


def _export(request: HttpRequest, fmt: str) -> HttpResponse:
    _require_audit_reader(request.user)
    form = _filter_form(request.user, request.GET)
    if not form.is_valid():
        return _render_page(request, form)
    filters = _describe_filters(form)
    label = "CSV" if fmt == "csv" else "JSON Lines"
    described = ", ".join(f"{name}={value}" for name, value in filters.items()) or "none"
    # Audited before the first byte leaves (autocommit: the event is durable even if the download breaks).
    for team in _scope_teams(request.user, form.cleaned_data.get("team") or ""):
        audit.record(
            "audit.exported",
            actor=request.user,
            team=team,
            target_type="audit_log",
            target_label="Audit log",
            summary=f"Exported the audit log as {label} (filters: {described})"[:500],
            context={"export": {"format": fmt, "filters": filters}},
        )
    events = filtered_events(request.user, form.cleaned_data).order_by("-seq")
    # A server-side cursor: memory stays flat however many rows match.
    rows = events.iterator(chunk_size=EXPORT_CHUNK_ROWS)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    if fmt == "csv":
        response = StreamingHttpResponse(audit.iter_csv(rows), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(audit.iter_jsonl(rows), content_type="application/x-ndjson; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="audit-log-{stamp}.{fmt}"'
    response["Cache-Control"] = "no-store"
    return response


@require_GET
def audit_export_csv(request: HttpRequest) -> HttpResponse:
    return _export(request, "csv")


@require_GET
def audit_export_jsonl(request: HttpRequest) -> HttpResponse:
    return _export(request, "jsonl")


@require_POST
def audit_verify(request: HttpRequest) -> HttpResponse:
    """Recompute the whole chain, record that we did and what we found, and show it."""
    _require_audit_reader(request.user)
    result = audit.verify_chain()
    for team in _scope_teams(request.user, ""):
        audit.record(
            "audit.verified",
            actor=request.user,
            team=team,
            target_type="audit_log",
            target_label="Audit log",
            summary=f"Verified the audit chain: {result.message()}"[:500],
        )
    if request.htmx:
        return render(request, f"{TEMPLATE}#verify_result", {"verify": result})
    if result.ok:
        messages.success(request, f"Chain verified. {result.message()}")
    else:
        messages.error(request, f"Chain verification failed. {result.message()}")
    return redirect("incidents:audit_log")
