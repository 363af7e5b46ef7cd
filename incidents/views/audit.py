"""The audit-log pages: filter, keyset-paginate, export and verify the chain.

Everything read here comes from ``selectors.filtered_events`` (over ``access.audit_log_events(user)``): the
events of the teams where the user audits or approves, plus team-less sign-in events for staff.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.http import FileResponse, Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_POST

from .. import access, audit, checkpoints, exports, selectors, verifications
from ..forms import AuditFilterForm
from ..http import HtmxHttpRequest
from ..models import AuditExport, AuditExportState, AuditVerification

FILTER_NAMES = ("team", "actor", "action", "incident", "target_type", "target_id", "target", "since", "until")
TEMPLATE = "incidents/audit_log.html"


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


def _render_page(request: HtmxHttpRequest, form: AuditFilterForm, *, status: int = 200) -> HttpResponse:
    page = None
    filters = _filter_query(form)
    if form.is_valid():
        events = selectors.filtered_events(request.user, form.cleaned_data)
        page = selectors.keyset_page(
            events, before=form.cleaned_data.get("before"), after=form.cleaned_data.get("after")
        )
    else:
        status = 422
    context = {
        "form": form,
        "page": page,
        "filters_active": bool(filters),
        "older_link": _link(filters, before=page.older_cursor) if page and page.older_cursor else "",
        "newer_link": _link(filters, after=page.newer_cursor) if page and page.newer_cursor else "",
        "export_query": _link(filters),
        "page_size": selectors.AUDIT_PAGE_SIZE,
    }
    partial = request.htmx and not request.htmx.history_restore_request
    if not partial:
        context["signing"] = _signing_context()
        context.update(_exports_context(request.user))
        context["verification"] = verifications.latest(request.user)
        # Recorded and committed, not in the chain yet (the sealer runs right after commits and every second).
        scope = selectors.audit_scope_teams(request.user, "")
        context["waiting"] = audit.waiting_count([team.pk if team is not None else None for team in scope])
        context["waiting_cap"] = audit.WAITING_CAP
    response = render(request, f"{TEMPLATE}#htmx_results" if partial else TEMPLATE, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _signing_context() -> dict[str, object]:
    """The key auditors pin (and its fingerprint) and the latest signed checkpoints of the chain."""
    try:
        key = checkpoints.public_key()
    except checkpoints.CheckpointError as exc:
        return {"problem": str(exc)}
    return {"public_key": key, "fingerprint": checkpoints.fingerprint(), "checkpoints": checkpoints.latest(5)}


def _exports_context(user) -> dict[str, object]:
    mine = exports.mine(user)
    return {
        "exports": mine,
        "exports_pending": any(export.pending for export in mine),
        "stream_max_rows": settings.AUDIT_EXPORT_STREAM_MAX_ROWS,
    }


# --- Views --------------------------------------------------------------------------------------------------
@require_GET
def audit_log(request: HtmxHttpRequest) -> HttpResponse:
    _require_audit_reader(request.user)
    return _render_page(request, AuditFilterForm.for_user(request.user, request.GET))


def _export(request: HtmxHttpRequest, fmt: str) -> HttpResponse:
    _require_audit_reader(request.user)
    form = AuditFilterForm.for_user(request.user, request.GET)
    if not form.is_valid():
        return _render_page(request, form)
    filters = _describe_filters(form)
    label = "CSV" if fmt == "csv" else "JSON Lines"
    described = ", ".join(f"{name}={value}" for name, value in filters.items()) or "none"
    # Audited before the first byte leaves (autocommit: the event is durable even if the download breaks).
    for team in selectors.audit_scope_teams(request.user, form.cleaned_data.get("team") or ""):
        audit.record(
            "audit.exported",
            actor=request.user,
            team=team,
            target_type="audit_log",
            target_label="Audit log",
            summary=f"Exported the audit log as {label} (filters: {described})"[:500],
            context={"export": {"format": fmt, "filters": filters}},
        )
    # Every export signs the head it starts from (the exported-event above included): the export can be checked
    # against it, and against every checkpoint before it, offline.
    try:
        checkpoint = checkpoints.sign_head("export")
    except checkpoints.CheckpointError as exc:
        messages.error(request, f"The export was not made: {exc}")
        return redirect("incidents:audit_log")
    events = selectors.filtered_events(request.user, form.cleaned_data).order_by("-seq")
    if exports.too_big_to_stream(events):
        # A request would outlive the server's timeout: a worker writes the file, the page offers it when ready.
        export = exports.request(
            user=request.user,
            fmt=fmt,
            filters=_filter_query(form),
            described=described,
            up_to_seq=checkpoint.seq if checkpoint else 0,
        )
        messages.info(
            request,
            f"The export is large: it is being built as export #{export.pk}. It appears under “Your exports” below "
            "when it is ready.",
        )
        return redirect(reverse("incidents:audit_log") + _link(_filter_query(form)))
    preamble = checkpoints.export_preamble() if fmt == "jsonl" else []
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    # PostgreSQL renders the rows, read through a server-side cursor: memory stays flat however many rows match.
    if fmt == "csv":
        response = StreamingHttpResponse(audit.fast_csv(events), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(
            itertools.chain(preamble, audit.fast_jsonl(events)), content_type="application/x-ndjson; charset=utf-8"
        )
    response["Content-Disposition"] = f'attachment; filename="audit-log-{stamp}.{fmt}"'
    response["Cache-Control"] = "no-store"
    return response


@require_GET
def audit_export_csv(request: HtmxHttpRequest) -> HttpResponse:
    return _export(request, "csv")


@require_GET
def audit_export_jsonl(request: HtmxHttpRequest) -> HttpResponse:
    return _export(request, "jsonl")


@require_POST
def audit_verify(request: HtmxHttpRequest) -> HttpResponse:
    """Verify the chain against every signed checkpoint: here for a small log, by a worker (progress shown, polled)
    for a big one. Either way the verdict is recorded as an audit event."""
    _require_audit_reader(request.user)
    if verifications.too_long_to_verify_inline():
        verification = verifications.request(request.user)
        if request.htmx:
            return render(request, f"{TEMPLATE}#verify_result", {"verification": verification})
        messages.info(request, f"Verification #{verification.pk} started: its progress is shown below.")
        return redirect("incidents:audit_log")
    result = verifications.verify_now()
    verifications.record_verdict(request.user, result)
    if request.htmx:
        return render(request, f"{TEMPLATE}#verify_result", {"verify": result})
    if result.ok:
        messages.success(request, f"Chain verified. {result.message()}")
    else:
        messages.error(request, f"Chain verification failed. {result.message()}")
    return redirect("incidents:audit_log")


@require_GET
def audit_verification(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """A background verification's progress, then its verdict (the page polls this while it runs)."""
    _require_audit_reader(request.user)
    verification = AuditVerification.objects.filter(pk=pk, requested_by=request.user).first()
    if verification is None:
        raise Http404("No such verification of yours.")
    return render(request, f"{TEMPLATE}#verify_result", {"verification": verification})


@require_GET
def audit_exports(request: HtmxHttpRequest) -> HttpResponse:
    """The user's latest background exports (the page polls this while one is being built)."""
    _require_audit_reader(request.user)
    return render(request, f"{TEMPLATE}#exports", _exports_context(request.user))


@require_GET
def audit_export_download(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The file of a background export, to the user who asked for it only (404 for anyone else)."""
    _require_audit_reader(request.user)
    export = AuditExport.objects.filter(pk=pk, requested_by=request.user).first()
    if export is None:
        raise Http404("No such export of yours.")
    if export.state != AuditExportState.DONE:
        return HttpResponse(f"Export #{export.pk} is not ready ({export.get_state_display()}).", status=409)
    path = exports.path_for(export)
    if not path.exists():
        raise Http404("The export's file is gone.")
    stamp = export.created_at.strftime("%Y%m%dT%H%M%SZ")
    content_type = "text/csv; charset=utf-8" if export.format == "csv" else "application/x-ndjson; charset=utf-8"
    response = FileResponse(
        path.open("rb"), as_attachment=True, filename=f"audit-log-{stamp}.{export.format}", content_type=content_type
    )
    response["Cache-Control"] = "no-store"
    return response
