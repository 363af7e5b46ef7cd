"""Writing drafts: the htmx form that validates as you go, previews the exact request, and saves, submits,
withdraws or discards through workflow.py. Every action also works as a plain POST without JavaScript."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods
from django_htmx.http import HttpResponseClientRedirect

from .. import access, draft_templates, notifications, public_text, selectors, workflow
from ..diffs import diff_fields
from ..forms import DRAFT_FIELD_LABELS, ID_MAX, DraftForm, return_path
from ..http import HtmxHttpRequest
from ..models import (
    DRAFT_FIELDS,
    Draft,
    DraftKind,
    DraftTemplate,
    Incident,
    IncidentUpdate,
    Service,
    Stage,
    Team,
    TemplateKind,
)

TEMPLATE = "incidents/draft.html"
# What a resolve form starts with when the team has no resolve template.
RESOLVE_TEXT = "This incident has been resolved."
# A correction's text starts with this (the responder may remove it): the public sees it corrects the last one.
CORRECTION_PREFIX = "Correction: "
# The buttons of a draft that is not being edited; each is one workflow action.
DRAFT_ACTIONS = {"withdraw": workflow.withdraw, "discard": workflow.discard}


def _redirect(request: HtmxHttpRequest, url: str) -> HttpResponse:
    # htmx would follow a 302 itself and swap the whole next page into the panel; HX-Redirect makes the browser
    # load it instead (and so show the flashed message).
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _preview(form: DraftForm, *, kind: str, incident: Incident | None) -> dict[str, Any]:
    """What the status page will show and the exact requests (one per service), built from the form as it stands."""
    # The typed text, not cleaned_data: the status-page preview follows the typing even while a field is invalid.
    raw = {name: form.data.get(name, "") for name in DRAFT_FIELDS}
    preview: dict[str, Any] = {
        "raw": raw,
        "valid": form.is_valid(),
        "stage_label": dict(Stage.choices).get(raw["stage"]),
        "problems": _problems(form),
        # What should never reach a status page (warnings only: nothing is blocked).
        "lint": public_text.warnings_by_field(raw),
    }
    if preview["valid"]:
        targets = workflow.targets_for(
            kind=kind,
            services=[form.target_service(), *form.other_services()],
            incident=incident,
            fields=form.draft_fields(),
        )
        preview["requests"] = [
            {
                "service": target.service,
                "method": target.request.method,
                "path": target.request.path,
                "body_json": json.dumps(target.request.json(), indent=2, ensure_ascii=False),
            }
            for target in targets
        ]
        if targets:  # the first, as before: one request is the common case
            preview.update(
                method=targets[0].request.method,
                path=targets[0].request.path,
                body_json=preview["requests"][0]["body_json"],
            )
    return preview


def _problems(form: DraftForm) -> list[dict[str, str]]:
    """Every error of a bound form, each naming its field (label and the id to link to): the preview's hint and
    the error summary say exactly what is wrong and where."""
    if not form.is_bound or form.is_valid():
        return []
    problems = []
    for name, errors in form.errors.items():
        field = form.fields.get(name)
        for message in errors:
            problems.append(
                {
                    "id": form[name].auto_id if field is not None else "",
                    "label": str(field.label) if field is not None else "",
                    "message": message,
                }
            )
    return problems


def _wire_live_validation(form: DraftForm, url: str) -> None:
    """Each field posts the form to ``url`` as the user types or leaves it; the answer is the preview plus
    that field's errors (out of band). Without JavaScript these attributes do nothing."""
    for name, field in form.fields.items():
        if field.widget.is_hidden:
            continue
        # Text fields wait for a pause in the typing; a select answers at once. All fields share the form's one
        # request queue (``closest form:replace``): a newer validation aborts an older one from any field, so an
        # older preview never overwrites a newer one. The live region (#preview) stays; only its body is swapped.
        typing = name in ("title", "description")
        auto_id = form[name].auto_id
        described_by = [f"{auto_id}_helptext"] if field.help_text else []
        field.widget.attrs.update(
            {
                "hx-post": url,
                "hx-trigger": "blur, input changed delay:600ms" if typing else "change",
                "hx-target": "#preview-body",
                "hx-swap": "innerHTML",
                "hx-vals": '{"action": "validate"}',
                "hx-sync": "closest form:replace",
                # The error container is always on the page (live validation fills it), so point at it always.
                "aria-describedby": " ".join([*described_by, f"{auto_id}_error"]),
            }
        )


def _approvers(request: HtmxHttpRequest, team: Team, draft: Draft | None) -> list:
    """The team's approvers who could approve once the current user submits: the four-eyes rule excludes everyone
    who saved a version (submitting saves one as the current user)."""
    excluded = {
        request.user.pk,
        *(draft.editors if draft else ()),
        *((draft.author_id, draft.last_editor_id) if draft else ()),
    }
    return list(notifications.team_approvers(team).exclude(pk__in=excluded).order_by("username"))


def _context(
    request: HtmxHttpRequest,
    form: DraftForm,
    *,
    kind: str,
    incident: Incident | None,
    draft: Draft | None,
    template: DraftTemplate | None = None,
):
    post_url = request.get_full_path()  # keeps ?resolve=1: the page stays the resolve page after a failed save
    _wire_live_validation(form, post_url)
    if draft is None and not form.is_bound and form.fields:
        next(iter(form.fields.values())).widget.attrs["autofocus"] = True
    return_to = return_path(request)
    team = draft.team if draft else (incident.service.team if incident else None)
    editable = draft is None or draft.is_editable
    # Storage of the typed text in the browser: per draft and version, or per new draft of an incident.
    storage_key = f"draft:{draft.pk}:v{draft.version}" if draft else f"new:{incident.pk if incident else kind}"
    correcting = draft is None and "corrects_position" in form.fields
    if draft is None:
        # Text picked from a template, or a correction, is not the text typed for a plain new draft.
        storage_key += (f":template{template.pk}" if template else "") + (":correction" if correcting else "")
    corrects = draft.corrects_update_number if draft else (_update_number(form) if correcting else None)
    return {
        "form": form,
        "summary": _problems(form) if form.is_bound else [],
        "resolving": draft is None and kind == DraftKind.UPDATE and request.GET.get("resolve") == "1",
        "added_service": form.added_service,
        "draft_services": workflow.services_in_order(draft.service_ids) if draft else [],
        "members": workflow.open_members(incident) if incident is not None and incident.group_id else [],
        "team": team,
        "approvers": _approvers(request, team, draft) if team is not None and editable else None,
        "storage_key": storage_key,
        "kind": kind,
        "incident": incident,
        "draft": draft,
        "corrects": corrects,
        # The template picker: only while a new draft is started (a template fills the form before editing).
        "templates": list(_pickable(request, kind, incident)) if draft is None else [],
        "picked_template": template,
        "picker_path": request.path,
        # Picking reloads this page with ?template=: it must stay the page it is (a resolve, a correction, adding or
        # removing a service).
        "picker_keep": {key: request.GET[key] for key in PICKER_KEEPS if request.GET.get(key)},
        "preview": _preview(form, kind=kind, incident=incident) if form.is_bound else None,
        # Before any typing, the lint of the text the form starts with (a template's, a correction's, the draft's).
        "initial_lint": [] if form.is_bound else public_text.warnings_by_field(_initial_text(form)),
        "post_url": post_url,
        "revisions": list(draft.revisions.select_related("review", "review__reviewer")) if draft else [],
        # A new incident's draft has no team until its service is chosen: team 0 is none, so no role is shown.
        "role": access.role_in(request.user, draft.team if draft else (incident.service.team if incident else 0)),
        "can_draft": draft is None or access.has_role(request.user, draft.team, access.DRAFTING_ROLES),
        "can_review": draft is not None and access.has_role(request.user, draft.team, access.REVIEWING_ROLES),
        "publication_blocks": [
            selectors.publication_block(request.user, publication, return_to=return_to)
            for publication in draft.publications.select_related(
                "request", "service", "revision", "revision__review", "team"
            )
            .prefetch_related("attempt_rows")
            .order_by("-created_at")
        ]
        if draft
        else [],
        "history": selectors.draft_history(request.user, draft) if draft else None,
    }


def _update_number(form: DraftForm) -> int | None:
    """The corrected update as people count them (from 1), from the form's hidden position."""
    value = str(form["corrects_position"].value() or "0")
    return int(value) + 1 if value.isdigit() else None


def _initial_text(form: DraftForm) -> dict[str, str]:
    return {name: str(form[name].value() or "") for name in DRAFT_FIELDS if name in form.fields}


def _render(request: HtmxHttpRequest, context: dict[str, Any], status: int = 200) -> HttpResponse:
    # The form's htmx posts target #draft-panel: the revisions, publications and history below it are not
    # rendered again. A 422 or 409 panel is swapped too (static/js/app.js allows those statuses).
    template = f"{TEMPLATE}#draft-panel" if request.htmx else TEMPLATE
    return render(request, template, context, status=status)


def _validate(request: HtmxHttpRequest, form: DraftForm, *, kind: str, incident: Incident | None) -> HttpResponse:
    """The htmx answer while typing: the preview, plus the errors of the field that triggered it."""
    form.is_valid()
    # Only the field being typed in: the ones the user has not reached yet must not turn red meanwhile.
    trigger = request.htmx.trigger_name if request.htmx else None
    visible = [name for name, field in form.fields.items() if not field.widget.is_hidden]
    fields = [trigger] if trigger in visible else visible
    # A rule across fields (description and stage go together) shows on the other field at once; a field the
    # user has not reached yet (only "required") stays quiet.
    fields += [
        name
        for name, errors in form.errors.as_data().items()
        if name in visible and name not in fields and any(error.code != "required" for error in errors)
    ]
    context = {
        "preview": _preview(form, kind=kind, incident=incident),
        "form": form,
        "oob_fields": [form[name] for name in fields],
        "kind": kind,
        "incident": incident,
    }
    return render(request, f"{TEMPLATE}#validation", context)


def _initial_for_update(incident: Incident, resolve: bool) -> dict[str, str]:
    """An update starts at the incident's current stage; resolving starts at resolved, with the team's resolve
    template (or the usual words when it has none)."""
    initial = {
        "title": incident.title,
        "severity": incident.severity,
        "stage": Stage.RESOLVED if resolve else incident.stage,
        "description": RESOLVE_TEXT if resolve else "",
    }
    if resolve:
        filled = draft_templates.resolve_default(incident.service.team, incident)
        if filled is not None:
            initial.update({name: value for name, value in filled.items() if value})
    return initial


def _correction_initial(incident: Incident, last: IncidentUpdate) -> dict[str, Any]:
    """A correction repeats the last update's stage and text, prefixed, to be edited into the corrected words."""
    return {
        "title": incident.title,
        "severity": incident.severity,
        "stage": last.stage if last.stage in Stage.values else incident.stage,
        "description": CORRECTION_PREFIX + last.description,
        "corrects_position": last.position,
    }


# The templates that fit each kind of draft: adding a service is a create on it (a new incident's words); removing
# one resolves its incident.
TEMPLATE_KINDS = {
    DraftKind.OPEN: (TemplateKind.OPEN,),
    DraftKind.UPDATE: (TemplateKind.UPDATE, TemplateKind.RESOLVE),
    DraftKind.ADD_SERVICE: (TemplateKind.OPEN,),
    DraftKind.REMOVE_SERVICE: (TemplateKind.RESOLVE,),
}
# The query parameters that make the draft page what it is, kept when a template is picked.
PICKER_KEEPS = ("resolve", "correct", "add", "remove")


def _template_kinds(kind: str) -> tuple[str, ...]:
    return TEMPLATE_KINDS[DraftKind(kind)]


def _pickable(request: HtmxHttpRequest, kind: str, incident: Incident | None):
    teams = [incident.service.team_id] if incident is not None else access.team_ids(request.user)
    return draft_templates.pickable(request.user, teams, _template_kinds(kind))


def _picked(request: HtmxHttpRequest, kind: str, incident: Incident | None) -> DraftTemplate | None:
    """The template named by ``?template=``, if the user may use it here; anything else is none."""
    raw = request.GET.get("template", "")
    if not raw.isdigit() or int(raw) > ID_MAX:
        return None
    return _pickable(request, kind, incident).filter(pk=int(raw)).first()


def _apply_template(
    request: HtmxHttpRequest,
    template: DraftTemplate,
    initial: dict[str, Any],
    incident: Incident | None,
    *,
    kind: str,
    added_service: Service | None = None,
) -> None:
    """Fill the form's starting values from ``template``: its non-empty fields replace them, placeholders filled
    (``{services}``: the services the draft goes to — the added one, the removed one, or every open one)."""
    services: list[Service] = []
    if kind == DraftKind.ADD_SERVICE and added_service is not None:
        services = [added_service]
    elif kind == DraftKind.REMOVE_SERVICE and incident is not None:
        services = [incident.service]
    elif incident is None:
        team_services = list(template.team.services.all())
        chosen = [s for s in team_services if str(s.pk) == str(initial.get("service", ""))]
        services = chosen or (team_services if len(team_services) == 1 else [])
        if len(services) == 1:
            initial["service"] = services[0].pk
    values = draft_templates.values_for(team=template.team, services=services, incident=incident)
    filled = draft_templates.fill(template, values)
    if template.kind == TemplateKind.RESOLVE:
        filled["stage"] = Stage.RESOLVED
    initial.update({name: value for name, value in filled.items() if value})


@require_http_methods(["GET", "POST"])
def draft_new(request: HtmxHttpRequest) -> HttpResponse:
    """A new incident: service, title, severity, description, stage."""
    # The team is the chosen service's, so any drafting role will do here; workflow.create checks that team's.
    if not access.team_ids(request.user, access.DRAFTING_ROLES):
        raise access.RoleRequired(access.DRAFTING_ROLES, action="draft an incident")
    return _new(request, kind=DraftKind.OPEN, incident=None)


@require_http_methods(["GET", "POST"])
def update_new(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """An update to an existing incident (``?resolve=1`` preselects the resolved stage). On a grouped incident it
    goes to every open service's incident. ``?add=<service id>`` adds a service to the incident (a create on it);
    ``?remove=1`` removes this incident's service from its group (a resolve of this incident): both reviewed."""
    incident = access.get_scoped_or_404(access.incidents(request.user), pk=pk)
    access.require_role(request.user, incident.service.team, access.DRAFTING_ROLES, action="post an update")
    # An update is sent to IsDown's incident id: until the incident is published there is nothing to update.
    if not incident.remote_id:
        messages.warning(request, "This incident is not on IsDown yet: updates can be drafted once it is published.")
        return redirect("incidents:incident_detail", pk=incident.pk)
    added: Service | None = None
    kind = DraftKind.UPDATE
    if request.GET.get("add"):
        team_services = access.services(request.user, access.DRAFTING_ROLES).filter(team=incident.service.team)
        added = access.get_scoped_or_404(team_services, pk=_int_or_404(request.GET["add"]))
        kind = DraftKind.ADD_SERVICE
    elif request.GET.get("remove") == "1":
        problem = workflow.removal_problem(incident)
        if problem is not None:
            messages.warning(request, problem)
            return redirect("incidents:incident_detail", pk=incident.pk)
        kind = DraftKind.REMOVE_SERVICE
    return _new(request, kind=kind, incident=incident, added_service=added)


def _int_or_404(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise Http404("No such service.")
    return int(raw)


def _initial_for_change(incident: Incident, kind: str, added: Service | None) -> dict[str, str]:
    """Adding a service starts from the incident as it stands (its title, severity, stage and words); removing one
    resolves that service's incident, saying so."""
    if kind == DraftKind.ADD_SERVICE:
        assert added is not None
        return {
            "title": incident.title,
            "severity": incident.severity,
            "stage": incident.stage,
            "description": incident.description or f"{added.name} is affected too.",
        }
    return {
        "title": incident.title,
        "severity": incident.severity,
        "stage": Stage.RESOLVED,
        "description": f"{incident.service.name} is no longer affected by this incident.",
    }


def _new(
    request: HtmxHttpRequest, *, kind: str, incident: Incident | None, added_service: Service | None = None
) -> HttpResponse:
    # ?correct=1: a correction of the incident's last update (IsDown cannot edit one: a new update corrects it).
    correcting = incident is not None and kind == DraftKind.UPDATE and request.GET.get("correct") == "1"
    form_args: dict[str, Any] = {
        "user": request.user,
        "kind": kind,
        "incident": incident,
        "added_service": added_service,
        "correcting": correcting,
    }
    if request.method == "GET":
        initial: dict[str, Any] = {"stage": Stage.INVESTIGATING, "severity": "minor"}
        if incident is not None and kind in (DraftKind.ADD_SERVICE, DraftKind.REMOVE_SERVICE):
            initial = _initial_for_change(incident, kind, added_service)
        elif incident is not None:
            initial = _initial_for_update(incident, request.GET.get("resolve") == "1")
        elif request.GET.get("service"):
            initial["service"] = request.GET["service"]
        if correcting and incident is not None:
            last = incident.updates.order_by("-position").first()
            if last is None:
                messages.warning(request, "This incident has no update on IsDown yet: there is nothing to correct.")
                return redirect("incidents:incident_detail", pk=incident.pk)
            initial = _correction_initial(incident, last)
        template = _picked(request, kind, incident)
        if template is not None:
            _apply_template(request, template, initial, incident, kind=kind, added_service=added_service)
        form = DraftForm(initial=initial, **form_args)
        return _render(request, _context(request, form, kind=kind, incident=incident, draft=None, template=template))

    form = DraftForm(request.POST, **form_args)
    action = request.POST.get("action", "save")
    if action == "validate":
        return _validate(request, form, kind=kind, incident=incident)
    # "preview" (and any other action) saves nothing: the form comes back with its preview, 200 when valid.
    if action not in ("save", "submit") or not form.is_valid():
        status = 422 if form.errors else 200
        return _render(request, _context(request, form, kind=kind, incident=incident, draft=None), status)
    start = {
        "user": request.user,
        "service": form.target_service(),
        "kind": kind,
        "fields": form.draft_fields(),
        "incident": incident,
        "corrects_position": form.corrects_position() if correcting else None,
        "also_services": form.other_services(),
    }
    try:
        draft_id = workflow.create_and_submit(**start).draft_id if action == "submit" else workflow.create(**start).pk
    except workflow.WorkflowError as exc:
        form.add_error(None, str(exc))
        return _render(request, _context(request, form, kind=kind, incident=incident, draft=None), 422)
    if action == "submit":
        messages.success(request, "Submitted for review. Approvers of your team have been notified.")
    else:
        messages.success(request, "Draft saved.")
    return _redirect(request, reverse("incidents:draft_detail", kwargs={"pk": draft_id}))


@require_http_methods(["GET", "POST"])
def draft_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    draft = access.get_scoped_or_404(access.drafts(request.user), pk=pk)
    kind, incident = draft.kind, draft.incident
    added = draft.service if kind == DraftKind.ADD_SERVICE else None
    if request.method == "GET":
        initial = {
            **workflow.draft_fields(draft),
            "service": draft.service_id,
            "also_services": list(draft.also_service_ids),
        }
        form = DraftForm(user=request.user, kind=kind, incident=incident, added_service=added, initial=initial)
        return _render(request, _context(request, form, kind=kind, incident=incident, draft=draft))

    action = request.POST.get("action", "save")
    # The role first: an auditor's POST is a 403 naming the role, whatever it carries.
    access.require_role(request.user, draft.team, access.DRAFTING_ROLES, action="change a draft")
    # Withdraw and discard are plain buttons outside the form: their outcome is a message on the reloaded page.
    if action in DRAFT_ACTIONS:
        try:
            DRAFT_ACTIONS[action](draft_id=draft.pk, user=request.user)
        except workflow.WorkflowError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request, "Withdrawn from review: you can edit it again." if action == "withdraw" else "Draft discarded."
            )
        return _redirect(request, reverse("incidents:draft_detail", kwargs={"pk": draft.pk}))

    form = DraftForm(request.POST, user=request.user, kind=kind, incident=incident, added_service=added)
    if action == "validate":
        return _validate(request, form, kind=kind, incident=incident)
    if action not in ("save", "submit") or not form.is_valid():
        context = _context(request, form, kind=kind, incident=incident, draft=draft)
        return _render(request, context, 422 if form.errors else 200)
    save_draft = workflow.save_and_submit if action == "submit" else workflow.save
    try:
        save_draft(
            draft_id=draft.pk,
            user=request.user,
            expected_version=_version(request),
            fields=form.draft_fields(),
            service=form.cleaned_data.get("service"),
            also_services=form.other_services() if "also_services" in form.fields else None,
        )
    except workflow.EditConflict as exc:
        # Nothing was saved: the form keeps the typed text, the panel shows their version beside it, and the
        # hidden version becomes theirs, so saving again knowingly replaces it.
        context = _context(request, form, kind=kind, incident=incident, draft=draft)
        context.update(
            conflict=exc.current,
            conflict_diff=diff_fields(workflow.draft_fields(exc.current), form.draft_fields(), DRAFT_FIELD_LABELS),
        )
        return _render(request, context, 409)
    except workflow.WorkflowError as exc:
        form.add_error("service" if isinstance(exc, workflow.ServiceChanged) else None, str(exc))
        return _render(request, _context(request, form, kind=kind, incident=incident, draft=draft), 422)
    messages.success(request, "Submitted for review." if action == "submit" else "Draft saved.")
    return _redirect(request, reverse("incidents:draft_detail", kwargs={"pk": draft.pk}))


def _version(request: HtmxHttpRequest) -> int:
    """The version the form was loaded at; anything unreadable is 0, which no draft has (a conflict)."""
    try:
        return int(request.POST.get("version", "0"))
    except ValueError:
        return 0
