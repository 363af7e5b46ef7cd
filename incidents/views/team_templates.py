"""A team's draft templates: the list (the team reads it), and create, edit and delete (approvers only, each
audited by draft_templates.py)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import access, draft_templates
from ..forms import DraftTemplateForm
from ..http import HtmxHttpRequest
from ..models import DraftTemplate, Team

ACTION = "manage templates"


def _team(request: HtmxHttpRequest, team_pk: int) -> Team:
    return access.get_scoped_or_404(access.teams(request.user), pk=team_pk)


def _template(team: Team, pk: int) -> DraftTemplate:
    return access.get_scoped_or_404(DraftTemplate.objects.filter(team=team), pk=pk)


def _list_url(team: Team) -> str:
    return reverse("incidents:template_list", kwargs={"team_pk": team.pk})


def _form_page(
    request: HtmxHttpRequest, team: Team, form: DraftTemplateForm, template: DraftTemplate | None, status=200
):
    context = {
        "team": team,
        "form": form,
        "template": template,
        "placeholders": draft_templates.PLACEHOLDERS,
    }
    return render(request, "incidents/template_form.html", context, status=status)


@require_GET
def template_list(request: HtmxHttpRequest, team_pk: int) -> HttpResponse:
    team = _team(request, team_pk)
    context = {
        "team": team,
        "templates": list(DraftTemplate.objects.filter(team=team).order_by("kind", "name")),
        "can_manage": access.has_role(request.user, team, access.REVIEWING_ROLES),
        "placeholders": draft_templates.PLACEHOLDERS,
    }
    return render(request, "incidents/template_list.html", context)


@require_http_methods(["GET", "POST"])
def template_new(request: HtmxHttpRequest, team_pk: int) -> HttpResponse:
    team = _team(request, team_pk)
    access.require_role(request.user, team, access.REVIEWING_ROLES, action=ACTION)
    if request.method == "GET":
        return _form_page(request, team, DraftTemplateForm(initial={"kind": request.GET.get("kind", "")}), None)
    form = DraftTemplateForm(request.POST)
    if not form.is_valid():
        return _form_page(request, team, form, None, 422)
    try:
        template = draft_templates.create(user=request.user, team=team, fields=form.cleaned_data)
    except draft_templates.TemplateError as exc:
        form.add_error("name", str(exc))
        return _form_page(request, team, form, None, 422)
    messages.success(request, f"Template “{template.name}” created.")
    return redirect(_list_url(team))


@require_http_methods(["GET", "POST"])
def template_edit(request: HtmxHttpRequest, team_pk: int, pk: int) -> HttpResponse:
    team = _team(request, team_pk)
    access.require_role(request.user, team, access.REVIEWING_ROLES, action=ACTION)
    template = _template(team, pk)
    if request.method == "GET":
        initial = {name: getattr(template, name) for name in DraftTemplateForm.base_fields}
        return _form_page(request, team, DraftTemplateForm(initial=initial), template)
    form = DraftTemplateForm(request.POST)
    if not form.is_valid():
        return _form_page(request, team, form, template, 422)
    try:
        draft_templates.update(user=request.user, template_id=template.pk, team=team, fields=form.cleaned_data)
    except draft_templates.TemplateError as exc:
        form.add_error("name", str(exc))
        return _form_page(request, team, form, template, 422)
    messages.success(request, f"Template “{form.cleaned_data['name']}” saved.")
    return redirect(_list_url(team))


@require_POST
def template_delete(request: HtmxHttpRequest, team_pk: int, pk: int) -> HttpResponse:
    team = _team(request, team_pk)
    access.require_role(request.user, team, access.REVIEWING_ROLES, action=ACTION)
    template = _template(team, pk)
    try:
        draft_templates.delete(user=request.user, template_id=template.pk, team=team)
    except draft_templates.TemplateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Template “{template.name}” deleted.")
    return redirect(_list_url(team))
