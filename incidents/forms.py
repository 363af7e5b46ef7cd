"""Forms validate input; they change nothing (workflow.py does). Every field is bounded (a length, a range),
so no input reaches the database it cannot hold."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString, mark_safe

from . import access, audit_actions
from .http import HtmxHttpRequest
from .models import (
    ALERT_LABEL_NAME_MAX_LENGTH,
    ALERT_LABEL_VALUE_MAX_LENGTH,
    COMMENT_MAX_LENGTH,
    DESCRIPTION_MAX_LENGTH,
    DRAFT_FIELDS,
    TEMPLATE_NAME_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    DraftKind,
    Incident,
    ReviewDecision,
    Service,
    Severity,
    Stage,
    Team,
    TemplateKind,
)

# Ids and versions are PostgreSQL bigints at most: a larger number names nothing.
ID_MAX = 2**63 - 1
# A password longer than this is not one anyone types; hashing megabytes would be work for an attacker to order.
PASSWORD_MAX_LENGTH = 4096
ONE_LINE_MESSAGE = "A title is one line: remove the line breaks (and any other control characters)."


def _is_one_line(text: str) -> bool:
    """No line or paragraph break of any kind (what ``str.splitlines`` splits on) and no other control character:
    a title goes into email subjects and single-line headings."""
    return not any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in text)


class BoundedLoginMixin:
    """Django's sign-in forms with their lengths enforced. Django sets the username's max_length after the field
    is built, so it is never checked: an over-long name reached authentication, and django-axes' 255-character
    column (a 500). Here a username longer than any user's, or an absurd password, is a failed sign-in like any
    other (the same message, so it tells nothing), without anything being authenticated or recorded."""

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        password = self.cleaned_data.get("password") or ""
        if len(username) > self.fields["username"].max_length or len(password) > PASSWORD_MAX_LENGTH:
            raise self.get_invalid_login_error()
        return super().clean()


class LoginForm(BoundedLoginMixin, AuthenticationForm):
    """The sign-in page's form (``LoginView(authentication_form=LoginForm)``)."""


class AdminLoginForm(BoundedLoginMixin, AdminAuthenticationForm):
    """The admin's sign-in form (``admin.site.login_form``)."""


class UncutCharField(forms.CharField):
    """A CharField whose input has no ``maxlength``: a browser silently cuts a paste at it (mid-word, issue 11).
    The limit is still the field's: the page counts it and the server refuses more, saying by how much."""

    def widget_attrs(self, widget: forms.Widget) -> dict[str, Any]:
        attrs = super().widget_attrs(widget)
        attrs.pop("maxlength", None)
        return attrs


# How the status page shows a description (settings.ISDOWN_MARKDOWN).
PLAIN_TEXT_HINT = "Shown as plain text on the status page: line breaks are kept, Markdown is not rendered."
MARKDOWN_HINT = "Markdown is rendered on the status page (bold, lists, links); the preview shows it that way."


def description_hint() -> str:
    return MARKDOWN_HINT if settings.ISDOWN_MARKDOWN else PLAIN_TEXT_HINT


class DraftForm(forms.Form):
    """One form for both kinds of draft.

    ``open``: service, title, severity, description, stage (all but description required).
    ``update``: title and severity start from the incident; description and stage go together (IsDown's
    rule) and at least something must change.
    """

    service = forms.ModelChoiceField(queryset=Service.objects.none(), label="Service", empty_label="Choose a service")
    also_services = forms.ModelMultipleChoiceField(
        queryset=Service.objects.none(),
        label="Also affected",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Other services of the same team: each gets its own IsDown incident, reviewed once, grouped here.",
    )
    title = UncutCharField(label="Title", max_length=TITLE_MAX_LENGTH, strip=True)
    severity = forms.ChoiceField(label="Severity", choices=Severity.choices)
    description = UncutCharField(
        label="Description",
        max_length=DESCRIPTION_MAX_LENGTH,
        required=False,
        widget=forms.Textarea,
        strip=True,
        help_text="",
    )
    stage = forms.ChoiceField(label="Stage", choices=Stage.choices, initial=Stage.INVESTIGATING)

    def __init__(
        self,
        *args: Any,
        user,
        kind: str,
        incident: Incident | None = None,
        correcting: bool = False,
        added_service: Service | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.incident = incident
        if correcting and kind == DraftKind.UPDATE:
            # A new update started from "Correct the last update": which update it corrects (workflow checks it).
            self.fields["corrects_position"] = forms.IntegerField(
                widget=forms.HiddenInput, required=False, min_value=0, max_value=ID_MAX
            )
        self.added_service = added_service
        self.fields["description"].help_text = description_hint()
        if kind == DraftKind.OPEN:
            services = access.services(user, access.DRAFTING_ROLES)
            self.fields["service"].queryset = services
            self.fields["also_services"].queryset = services
            if services.count() < 2:
                del self.fields["also_services"]  # nothing else to pick
            if not self.is_bound and "service" not in self.initial and services.count() == 1:
                self.initial["service"] = services.get().pk  # one choice: nothing to choose
        elif kind == DraftKind.ADD_SERVICE:
            del self.fields["service"], self.fields["also_services"]
        else:
            del self.fields["service"], self.fields["also_services"]
            self.fields["stage"].required = False
            self.fields["stage"].choices = [("", "No stage change (no update posted)"), *Stage.choices]
            self.fields[
                "description"
            ].help_text = f"Posted as a new update. Description and stage go together. {description_hint()}"
            if kind == DraftKind.REMOVE_SERVICE:
                self.fields["stage"].choices = [(Stage.RESOLVED, Stage.RESOLVED.label)]
                self.fields["stage"].required = True
                self.fields["description"].required = True
                self.fields[
                    "description"
                ].help_text = f"Posted as the resolving update of this service's IsDown incident. {description_hint()}"
        for name, field in self.fields.items():
            if name != "also_services":  # its checkboxes are named by Django (id_also_services_0, …)
                field.widget.attrs.setdefault("id", f"id_{name}")
        # The page's counters come from each field's max_length (no maxlength attribute: see UncutCharField).
        self.fields["description"].widget.attrs["rows"] = 8

    def clean_title(self) -> str:
        title = self.cleaned_data["title"]
        if not _is_one_line(title):
            raise forms.ValidationError(ONE_LINE_MESSAGE, code="multiline")
        return title

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        primary = data.get("service")
        others = [other for other in data.get("also_services") or [] if primary is None or other.pk != primary.pk]
        if primary is not None and others:
            foreign = [other.name for other in others if other.team_id != primary.team_id]
            if foreign:
                self.add_error(
                    "also_services",
                    f"{', '.join(foreign)} belong{'s' if len(foreign) == 1 else ''} to another team than "
                    f"{primary.name}: one incident covers services of one team.",
                )
        data["also_services"] = others
        if self.kind == DraftKind.UPDATE:
            description, stage = data.get("description", ""), data.get("stage", "")
            if description and not stage:
                self.add_error("stage", "Choose the stage this update announces: IsDown needs both together.")
            if stage and not description and "description" not in self.errors:
                self.add_error("description", "Write the update's text: IsDown needs description and stage together.")
            incident = self.incident
            unchanged = (
                incident is not None
                and data.get("title") == incident.title
                and data.get("severity") == incident.severity
                and not description
                and not stage
            )
            if unchanged and not self.errors:
                raise forms.ValidationError("Nothing to send: change the title or severity, or write an update.")
        return data

    def target_service(self) -> Service:
        """The service the draft is for: the one chosen (a new incident), the one added, or the incident's."""
        if self.kind == DraftKind.OPEN:
            return self.cleaned_data["service"]
        if self.kind == DraftKind.ADD_SERVICE:
            assert self.added_service is not None, "an add-a-service form has its service"
            return self.added_service
        assert self.incident is not None, "an update form has its incident"
        return self.incident.service

    def other_services(self) -> list[Service]:
        """A new incident's other services (empty for every other kind)."""
        return list(self.cleaned_data.get("also_services") or [])

    def draft_fields(self) -> dict[str, str]:
        data = self.cleaned_data
        return {name: data.get(name) or "" for name in DRAFT_FIELDS}

    def corrects_position(self) -> int | None:
        position = self.cleaned_data.get("corrects_position")
        return position if isinstance(position, int) else None


# How the diffs on the review and conflict views name the draft's fields: as the form does.
DRAFT_FIELD_LABELS = {name: DraftForm.base_fields[name].label for name in DRAFT_FIELDS}


class ReviewForm(forms.Form):
    # Break-glass is not a review decision one takes on someone else's revision: it has a form of its own.
    decision = forms.ChoiceField(choices=[c for c in ReviewDecision.choices if c[0] != ReviewDecision.BREAK_GLASS])
    revision = forms.IntegerField(widget=forms.HiddenInput, min_value=1, max_value=ID_MAX)
    # The SHA-256 the reviewer was shown: an approval binds to it.
    sha256 = forms.CharField(widget=forms.HiddenInput, required=False, max_length=64)
    comment = forms.CharField(
        label="Comment", max_length=COMMENT_MAX_LENGTH, required=False, widget=forms.Textarea(attrs={"rows": 4})
    )
    # Scheduled publication (issue 12 §7): an approval may name a later time to publish at, in the user's zone.
    publish_at = forms.DateTimeField(
        label="Publish at",
        required=False,
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Empty: as soon as it is approved.",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        publish_at = data.get("publish_at")
        if publish_at is not None:
            if data.get("decision") != ReviewDecision.APPROVE:
                self.add_error("publish_at", "Only an approval can be scheduled.")
            elif publish_at <= timezone.now():
                self.add_error("publish_at", "Choose a time still to come, or leave it empty to publish at once.")
            elif publish_at.year > 9000:
                self.add_error("publish_at", "Choose a time in the foreseeable future.")
        if (
            data.get("decision") in (ReviewDecision.REQUEST_CHANGES, ReviewDecision.REJECT)
            and not data.get("comment", "").strip()
        ):
            self.add_error("comment", "A comment is required to ask for changes or to reject.")
        return data


class AcceptWarningForm(forms.Form):
    """Which warning an approver accepts on the review page: the revision, the rule, the field and the span."""

    revision_id = forms.IntegerField(min_value=1, max_value=ID_MAX)
    rule = forms.CharField(max_length=40)
    field = forms.CharField(max_length=20)
    start = forms.IntegerField(min_value=0, max_value=DESCRIPTION_MAX_LENGTH)
    end = forms.IntegerField(min_value=0, max_value=DESCRIPTION_MAX_LENGTH)


class IncidentFilterForm(forms.Form):
    q = forms.CharField(label="Search titles", required=False, max_length=200)
    service = forms.ModelChoiceField(queryset=Service.objects.none(), required=False, empty_label="All services")
    severity = forms.ChoiceField(choices=[("", "Any severity"), *Severity.choices], required=False)
    stage = forms.ChoiceField(choices=[("", "Any stage"), *Stage.choices], required=False)
    status = forms.ChoiceField(
        choices=[("", "Open and resolved"), ("open", "Open"), ("resolved", "Resolved")], required=False
    )

    def __init__(self, *args: Any, user, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["service"].queryset = access.services(user)


class DraftTemplateForm(forms.Form):
    """A team's draft template (draft_templates.py saves it). Placeholders are checked by the public-text lint
    where the filled text is used, never here: a template may hold any text."""

    name = forms.CharField(label="Name", max_length=TEMPLATE_NAME_MAX_LENGTH, strip=True)
    kind = forms.ChoiceField(label="For", choices=TemplateKind.choices)
    title = UncutCharField(label="Title", max_length=TITLE_MAX_LENGTH, required=False, strip=True)
    severity = forms.ChoiceField(label="Severity", choices=[("", "Keep the form's"), *Severity.choices], required=False)
    stage = forms.ChoiceField(label="Stage", choices=[("", "Keep the form's"), *Stage.choices], required=False)
    description = UncutCharField(
        label="Description", max_length=DESCRIPTION_MAX_LENGTH, required=False, widget=forms.Textarea, strip=True
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["description"].widget.attrs["rows"] = 8
        for name, field in self.fields.items():
            field.widget.attrs.setdefault("id", f"id_{name}")

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if not _is_one_line(name):
            raise forms.ValidationError("A name is one line.", code="multiline")
        return name

    def clean_title(self) -> str:
        title = self.cleaned_data["title"]
        if not _is_one_line(title):
            raise forms.ValidationError(ONE_LINE_MESSAGE, code="multiline")
        return title

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("kind") == TemplateKind.RESOLVE:
            if data.get("stage") not in ("", Stage.RESOLVED):
                self.add_error("stage", "A resolve template resolves: leave the stage as resolved (or the form's).")
            data["stage"] = Stage.RESOLVED
        return data


# --- The audit log ------------------------------------------------------------------------------------------
DATETIME_HELP = "Site time zone ({tz}); e.g. 2025-03-01 14:30."
# The ``team`` filter value for the team-less events (sign-ins) only staff may read.
NO_TEAM = "none"


def _html_attrs(attrs: Mapping[str, Any]) -> str:
    """A widget's attributes as Django's ``attrs.html`` writes them (False: left out; True: the name alone)."""
    return "".join(
        format_html(" {}", name) if value is True else format_html(' {}="{}"', name, str(value))
        for name, value in attrs.items()
        if value is not False
    )


class InlineOptionsSelect(forms.Select):
    """A ``<select>`` whose options are written here rather than through one template each: the audit filter's
    action list has about a hundred, which cost the audit page ~4 ms per request through the form renderer (issue
    13 P2). The markup is exactly that of Django's ``select.html`` and ``select_option.html`` (tested)."""

    def render(self, name: str, value: Any, attrs: Any = None, renderer: Any = None) -> SafeString:
        widget = self.get_context(name, value, attrs)["widget"]
        parts = [format_html('<select name="{}"', widget["name"]), _html_attrs(widget["attrs"]), ">"]
        for group_name, options, _index in widget["optgroups"]:
            if group_name:
                parts.append(format_html('\n  <optgroup label="{}">', group_name))
            for option in options:
                parts.append(format_html('\n  <option value="{}"', str(option["value"])))
                parts.append(_html_attrs(option["attrs"]))
                parts.append(format_html(">{}</option>\n", option["label"]))  # the option template's last line
            if group_name:
                parts.append("\n  </optgroup>")
        parts.append("\n</select>")
        return mark_safe("".join(parts))  # noqa: S308 - every part above is escaped by format_html


class AuditActionField(forms.ChoiceField):
    """One registered action (``draft.submitted``), or every action of a kind (``draft.``, also ``draft.*``)."""

    widget = InlineOptionsSelect

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=audit_actions.filter_choices, **kwargs)
        self.error_messages["invalid_choice"] = (
            "“%(value)s” is not an action of this log. Choose one from the list: lower-case dotted names such as "
            "draft.submitted, or draft. for every draft action."
        )

    def to_python(self, value: Any) -> str:
        value = super().to_python(value).strip()
        return value.removesuffix("*") if value.endswith(".*") else value


class AuditFilterForm(forms.Form):
    """The audit-log filters; the team choices depend on the user's teams (``for_user``)."""

    team = forms.ChoiceField(required=False, label="Team")
    actor = forms.CharField(required=False, max_length=150, label="Actor", help_text="Username")
    action = AuditActionField(required=False, label="Action")
    # An incident page's "all of it" link: the incident's events and those of its drafts and publications.
    incident = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=ID_MAX,
        label="Incident id",
        help_text="With its drafts and publications",
    )
    target_type = forms.CharField(required=False, max_length=40, label="Target type", help_text="e.g. draft")
    target_id = forms.CharField(required=False, max_length=64, label="Target id")
    target = forms.CharField(required=False, max_length=300, label="Target label contains")
    since = forms.DateTimeField(required=False, label="From")
    until = forms.DateTimeField(required=False, label="To", help_text="Up to the end of that minute")
    # A seq is a bigint: a larger cursor names no event.
    before = forms.IntegerField(required=False, min_value=1, max_value=ID_MAX, widget=forms.HiddenInput)
    after = forms.IntegerField(required=False, min_value=1, max_value=ID_MAX, widget=forms.HiddenInput)

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

    @classmethod
    def for_user(cls, user, data: Mapping[str, Any] | None) -> AuditFilterForm:
        """The form as ``user`` sees it: the teams they audit, and the team-less events if they are staff."""
        return cls(
            data,
            teams=access.teams(user, access.AUDIT_ROLES).order_by("name"),
            include_no_team=bool(user.is_staff),
        )

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


# --- The account page --------------------------------------------------------------------------------------
class TimeZoneForm(forms.Form):
    """The zone times are shown and typed in; "" is the site's (settings.TIME_ZONE)."""

    time_zone = forms.ChoiceField(required=False, label="Time zone")

    def __init__(self, *args: Any, zones: Iterable[str], site_zone: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["time_zone"].choices = [("", f"The site's ({site_zone})"), *((name, name) for name in zones)]


# --- A publication's human actions -------------------------------------------------------------------------
class PublicationActionForm(forms.Form):
    """The inputs of an approver's actions on a publication (``_publication.html``): the IsDown incident id of
    "mark as published", the reason of "abandon", the note of "acknowledge". The page's limits come from here;
    views/publications.py cuts a reason or a note at the same length."""

    # "#" and up to 18 digits, with room for stray spaces; publishing.mark_published checks the id itself.
    remote_id = forms.CharField(required=False, max_length=20)
    reason = forms.CharField(required=False, max_length=COMMENT_MAX_LENGTH)
    note = forms.CharField(required=False, max_length=COMMENT_MAX_LENGTH)


# --- Where to go back to ------------------------------------------------------------------------------------
def next_path(request: HttpRequest) -> str:
    """The ``next`` of a request if it is a path on this site (``/...``), else "". Anything else is ignored:
    another site is an open redirect, and ``redirect()`` reads a bare word ("-1") as a view name (a 500)."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate.startswith("/") and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return ""


def return_path(request: HtmxHttpRequest) -> str:
    """Where a publication's action forms send the user back: this page, or, when htmx asks for a fragment,
    the page that holds it (its validated ``next``)."""
    return next_path(request) if request.htmx else request.get_full_path()


# --- Break-glass and reminders (issue 12 §4, §5) -------------------------------------------------------------
TOTP_CODE_FIELD = {
    "label": "Code from your authenticator app",
    "max_length": 12,
    "widget": forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "size": 8}),
}


class BreakGlassForm(forms.Form):
    revision = forms.IntegerField(widget=forms.HiddenInput, min_value=1, max_value=ID_MAX)
    sha256 = forms.CharField(widget=forms.HiddenInput, max_length=64)
    reason = forms.CharField(
        label="Why this cannot wait for a second approver",
        max_length=COMMENT_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": "Write why this cannot wait for a second approver."},
    )
    code = forms.CharField(**TOTP_CODE_FIELD, error_messages={"required": "Type the code your app shows now."})


class PostReviewForm(forms.Form):
    comment = forms.CharField(
        label="Comment (optional)",
        max_length=COMMENT_MAX_LENGTH,
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
    )


class MfaEnrolForm(forms.Form):
    code = forms.CharField(**TOTP_CODE_FIELD, error_messages={"required": "Type the code your app shows now."})


class MfaRecoveryForm(forms.Form):
    recovery_code = forms.CharField(label="A recovery code", max_length=20)


class NextUpdateDueForm(forms.Form):
    minutes = forms.IntegerField(
        label="Next update due in (minutes)",
        min_value=1,
        max_value=24 * 60,
        error_messages={"min_value": "At least 1 minute.", "max_value": "At most 24 hours (1440 minutes)."},
    )


# --- Drafts from alerts (issue 12 §6) ------------------------------------------------------------------------------
class AlertRouteForm(forms.Form):
    """One mapping from an alert label to one of the team's services."""

    label_name = forms.RegexField(
        label="Label name",
        max_length=ALERT_LABEL_NAME_MAX_LENGTH,
        regex=r"^[A-Za-z_][A-Za-z0-9_]*\Z",
        error_messages={"invalid": "A label name is letters, digits and underscores, not starting with a digit."},
        help_text='As in the alert, e.g. "service".',
    )
    label_value = forms.CharField(
        label="Label value", max_length=ALERT_LABEL_VALUE_MAX_LENGTH, help_text='e.g. "api"', strip=False
    )
    service = forms.ModelChoiceField(label="Service", queryset=Service.objects.none(), empty_label=None)

    def __init__(self, *args: Any, services: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["service"].queryset = services

    def clean_label_value(self) -> str:
        value = self.cleaned_data["label_value"]
        if not value or not _is_one_line(value) or "\x00" in value:
            raise forms.ValidationError("A label value is one line of text.")
        return value
