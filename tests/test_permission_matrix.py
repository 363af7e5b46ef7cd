"""Every URL pattern the resolver knows, for every persona, GET and POST, against a table of what must happen.

The walk recurses into every include and skips nothing: a pattern without a row in ``EXPECTED`` fails the suite
with its name, so a new URL cannot ship without someone deciding who may use it. Objects in the URLs are the
Platform team's (a draft in review, a published incident, a queued publication); ``outsider`` is a member of
another team, ``staff`` a staff superuser with no team.

Outcomes: a status code; ``LOGIN`` (302 to a login page); ``REDIRECT`` (302 elsewhere); a tuple of accepted
codes where the answer honestly depends on the state of the world (``/healthz``). POSTs carry no data: they
show who gets past the access checks, never that a form is valid. Each request runs in a savepoint that is
rolled back, so one persona's POST cannot change what the next one sees.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.apps import apps
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from incidents import workflow
from incidents.models import AuditEvent, AuditExport, AuditVerification, DraftKind, DraftTemplate, Membership
from tests.factories import IncidentFactory
from tests.publishing.factories import approved_publication

PERSONAS = ("anonymous", "outsider", "responder", "approver", "auditor", "staff")
LOGIN = "login"
REDIRECT = "redirect"
Outcome = int | str | tuple[int, ...]


# --- The walk --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    key: str  # the namespaced URL name, or "route:<pattern>" for a pattern without a name
    route: str  # the whole pattern, includes joined
    name: str | None
    params: tuple[str, ...]


def _params(entry: URLPattern) -> tuple[str, ...]:
    regex = entry.pattern.regex
    return tuple(regex.groupindex)


def walk(resolver: URLResolver | None = None, prefix: str = "", namespace: str = "") -> Iterator[Route]:
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from walk(entry, prefix + str(entry.pattern), inner)
        elif isinstance(entry, URLPattern):
            route = prefix + str(entry.pattern)
            name = f"{namespace}{entry.name}" if entry.name else None
            yield Route(name or f"route:{route}", route, name, _params(entry))
        else:  # pragma: no cover - the resolver only holds these two
            raise AssertionError(f"unknown URL entry {entry!r}")


ROUTES = list(walk())


# --- Outcomes ----------------------------------------------------------------------------------------------------
def row(**by_persona: tuple[Outcome, Outcome]) -> dict[str, tuple[Outcome, Outcome]]:
    """One URL's (GET, POST) outcomes for every persona; a missing persona is a mistake in the table."""
    missing = set(PERSONAS) - set(by_persona)
    assert not missing, f"row without {sorted(missing)}"
    return by_persona


def same(outcome: tuple[Outcome, Outcome], *, anonymous: tuple[Outcome, Outcome] = (LOGIN, LOGIN), **others):
    """Every signed-in persona gets ``outcome`` unless named."""
    return row(anonymous=anonymous, **{p: others.get(p, outcome) for p in PERSONAS if p != "anonymous"})


def team_object(*, responder, approver, auditor) -> dict[str, tuple[Outcome, Outcome]]:
    """A Platform team object. Another team's member, and staff (who are on no team), get a 404 wherever a member
    gets past the method check: they do not learn it exists."""
    hidden = tuple(405 if code == 405 else 404 for code in responder)
    return row(
        anonymous=(LOGIN, LOGIN),
        outsider=hidden,
        responder=responder,
        approver=approver,
        auditor=auditor,
        staff=hidden,
    )


def staff_only(get: Outcome = 200, post: Outcome = 200, *, anonymous=(LOGIN, LOGIN)):
    """Django's admin: staff only; a signed-in non-staff user is sent to the admin's login page."""
    return row(
        anonymous=anonymous,
        outsider=(LOGIN, LOGIN),
        responder=(LOGIN, LOGIN),
        approver=(LOGIN, LOGIN),
        auditor=(LOGIN, LOGIN),
        staff=(get, post),
    )


def public(get: Outcome, post: Outcome):
    return same((get, post), anonymous=(get, post))


# A publication action, approvers only. The queued publication is in no state an action applies to: the plain
# (non-htmx) answer is a redirect back to it with the error as a message.
PUBLICATION_ACTION = team_object(responder=(405, 403), approver=(405, REDIRECT), auditor=(405, 403))
OK = (200, 200)
REFUSED = (403, 403)


def admin_model(*, add=OK, delete=OK, change=OK) -> dict[str, dict[str, tuple[Outcome, Outcome]]]:
    """The six pages of one model in the admin, keyed by their suffix; (GET, POST) for staff."""
    return {
        "changelist": staff_only(200, 200),
        "add": staff_only(*add),
        "history": staff_only(200, 200),
        "delete": staff_only(*delete),  # a POST without "post=yes" only asks for confirmation
        "change": staff_only(*change),
        "object": staff_only(REDIRECT, REDIRECT),  # <path:object_id>/ redirects to .../change/
    }


# Axes' records can be looked at and deleted (that is how a lockout is lifted: audited), never added.
AXES_RECORD = admin_model(add=REFUSED, change=(200, REDIRECT))
ADMIN_MODELS: dict[str, dict[str, dict[str, tuple[Outcome, Outcome]]]] = {
    "auth_group": admin_model(),
    "auth_user": admin_model(),
    "axes_accessattempt": AXES_RECORD,
    "axes_accesslog": AXES_RECORD,
    "axes_accessfailurelog": AXES_RECORD,
    "incidents_team": admin_model(),
    "incidents_membership": admin_model(),
    "incidents_service": admin_model(),
    # The audit log is append-only, in the admin too.
    "incidents_auditevent": admin_model(add=REFUSED, delete=REFUSED, change=(200, 403)),
    "sandbox_sandboxservice": admin_model(),
    "sandbox_sandboxincident": admin_model(),
    # Faults are queued from the sandbox's own page (superusers, audited), never from the admin.
    "sandbox_sandboxfault": admin_model(add=REFUSED, delete=REFUSED, change=(200, 403)),
    # The request log is the sandbox's record: read and cleared, never written by hand.
    "sandbox_sandboxrequest": admin_model(add=REFUSED, change=(200, 403)),
}

EXPECTED: dict[str, dict[str, tuple[Outcome, Outcome]]] = {
    # Sign-in and account pages.
    "login": same((REDIRECT, REDIRECT), anonymous=(200, 200)),  # signed in: on to the dashboard
    "logout": same((405, LOGIN)),  # POST only; then back to the login page
    "password_change": same((200, 200)),
    "password_change_done": same((200, 405)),
    "healthz": public((200, 503), 405),
    "favicon": public(REDIRECT, 405),  # on to the static file, for anyone
    # The app.
    "incidents:dashboard": same((200, 405)),
    "incidents:account": same((200, REDIRECT)),  # an empty POST chooses the site's zone
    "incidents:incident_list": same((200, 405)),
    "incidents:service_detail": team_object(responder=(200, 405), approver=(200, 405), auditor=(200, 405)),
    "incidents:incident_detail": team_object(responder=(200, 405), approver=(200, 405), auditor=(200, 405)),
    # An empty POST gets past access and fails validation (422); auditors draft nothing.
    "incidents:update_new": team_object(responder=(200, 422), approver=(200, 422), auditor=REFUSED),
    "incidents:draft_new": same((200, 422), auditor=REFUSED, staff=REFUSED),  # outsider drafts for Data
    "incidents:draft_detail": team_object(responder=(200, 422), approver=(200, 422), auditor=(200, 403)),
    # The team reads the review page (the author sees why they cannot approve); only an approver decides.
    "incidents:draft_review": team_object(responder=(200, 403), approver=(200, 422), auditor=(200, 403)),
    # Accepting a lint warning: approvers only (an empty POST names no warning: back to the review, with a message).
    "incidents:draft_accept_warning": team_object(responder=(405, 403), approver=(405, REDIRECT), auditor=(405, 403)),
    # A team's draft templates: the team reads them; approvers create, edit and delete (an empty POST is a 422).
    "incidents:template_list": team_object(responder=(200, 405), approver=(200, 405), auditor=(200, 405)),
    "incidents:template_new": team_object(responder=REFUSED, approver=(200, 422), auditor=REFUSED),
    "incidents:template_edit": team_object(responder=REFUSED, approver=(200, 422), auditor=REFUSED),
    "incidents:template_delete": team_object(responder=(405, 403), approver=(405, REDIRECT), auditor=(405, 403)),
    # Break-glass (issue 12 §4): approvers only; an empty POST fails validation. The post-review of a draft with no
    # break-glass publication sends the approver back to the review page with a message.
    "incidents:draft_break_glass": team_object(responder=(405, 403), approver=(405, 422), auditor=(405, 403)),
    "incidents:draft_post_review": team_object(responder=(405, 403), approver=(405, REDIRECT), auditor=(405, 403)),
    # Everyone may enrol an authenticator app; an empty POST is an invalid code.
    "incidents:mfa_setup": same((200, 422)),
    # Reminders (issue 12 §5): whoever drafts moves the next update (an empty POST: back with a message).
    "incidents:incident_next_update_due": team_object(
        responder=(405, REDIRECT), approver=(405, REDIRECT), auditor=(405, 403)
    ),
    # Auditors and approvers read their team's log; staff the team-less events; responders nothing.
    "incidents:audit_log": same((200, 405), outsider=(403, 405), responder=(403, 405)),
    "incidents:audit_export_csv": same((200, 405), outsider=(403, 405), responder=(403, 405)),
    "incidents:audit_export_jsonl": same((200, 405), outsider=(403, 405), responder=(403, 405)),
    "incidents:audit_verify": same((405, REDIRECT), outsider=(405, 403), responder=(405, 403)),
    # A background verification's progress, to its requester only (the world's is the auditor's).
    "incidents:audit_verification": same((404, 405), outsider=(403, 405), responder=(403, 405), auditor=(200, 405)),
    "incidents:audit_exports": same((200, 405), outsider=(403, 405), responder=(403, 405)),
    # A background export's file, to its requester only (the world's is the auditor's, still queued: 409).
    "incidents:audit_export_download": same((404, 405), outsider=(403, 405), responder=(403, 405), auditor=(409, 405)),
    "incidents:publication_status": team_object(responder=(200, 405), approver=(200, 405), auditor=(200, 405)),
    "incidents:publication_retry": PUBLICATION_ACTION,
    # Whoever drafts may edit and resubmit what IsDown refused (a queued one is refused: back to its page).
    "incidents:publication_edit_and_resubmit": team_object(
        responder=(405, REDIRECT), approver=(405, REDIRECT), auditor=(405, 403)
    ),
    "incidents:publication_send_again": PUBLICATION_ACTION,
    "incidents:publication_mark_published": PUBLICATION_ACTION,
    "incidents:publication_abandon": PUBLICATION_ACTION,
    "incidents:publication_delete_duplicates": PUBLICATION_ACTION,
    "incidents:publication_acknowledge": PUBLICATION_ACTION,
    # Cancelling a scheduled publication (issue 12 §7): the queued one is not scheduled, so it is refused.
    "incidents:publication_cancel": PUBLICATION_ACTION,
    # Drafts from alerts (issue 12 §6). The webhook answers to its team's bearer token, never to a session: a POST
    # without the token is a 401 for everyone (GET: 405). The page: the team reads it, its approvers change it (an
    # empty POST fails the mapping form's validation; removing a mapping that is not there redirects back).
    "incidents:alerts_webhook": public(405, 401),
    "incidents:alert_settings": team_object(responder=(200, 403), approver=(200, 422), auditor=(200, 403)),
    "incidents:alert_token_rotate": team_object(responder=(405, 403), approver=(405, 200), auditor=(405, 403)),
    "incidents:alert_route_delete": team_object(responder=(405, 403), approver=(405, REDIRECT), auditor=(405, 403)),
    # The IsDown sandbox (development only). Its control page: superusers (every team's bodies, and faults that
    # stall every team's publishing). Its API answers to the bearer key, never to a session.
    "sandbox:control": same(REFUSED, staff=(200, 422)),
    "sandbox:status": public(200, 405),
    "sandbox:api_incidents": public(401, 401),
    "sandbox:api_incident": public(401, 401),
    "sandbox:api_unknown": public(401, 401),
    # Django's admin.
    "admin:index": staff_only(200, 200),
    "admin:login": same((200, 200), anonymous=(200, 200), staff=(REDIRECT, 200)),
    "admin:logout": same((REDIRECT, REDIRECT), staff=(405, LOGIN)),
    "admin:password_change": staff_only(200, 200),
    "admin:password_change_done": staff_only(200, 405),
    "admin:autocomplete": staff_only(403, 405),  # 403 without the field it completes
    "admin:jsi18n": staff_only(200, 405),
    "admin:view_on_site": staff_only(404, 404),  # no model has a page of its own
    "admin:app_list": staff_only(200, 200),
    "admin:auth_user_password_change": staff_only(200, 200),
    "route:admin/(?P<url>.*)$": staff_only(404, 404),
}
for _model, _pages in ADMIN_MODELS.items():
    _app, _name = _model.split("_", 1)
    for _suffix, _row in _pages.items():
        if _suffix == "object":
            EXPECTED[f"route:admin/{_app}/{_name}/<path:object_id>/"] = _row
        else:
            EXPECTED[f"admin:{_model}_{_suffix}"] = _row


# --- The world the URLs point into -------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """Six personas a test: a fast hasher keeps the matrix quick (passwords are not what it checks)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(responder, approver, auditor, outsider, staff, api_service, pipeline_service) -> dict[str, Any]:
    fields = {"title": "API errors", "severity": "major", "description": "Elevated 5xx.", "stage": "investigating"}
    draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=fields)
    workflow.submit(draft_id=draft.pk, user=responder)
    incident = IncidentFactory(service=api_service, remote_id="4711")
    template = DraftTemplate.objects.create(team=api_service.team, kind="update", name="Identified", stage="identified")
    publication = approved_publication(service=api_service, author=responder)
    Group.objects.create(name="operators")
    attempt = AccessAttempt.objects.create(
        username="responder",
        ip_address="192.0.2.1",
        user_agent="test",
        failures_since_start=1,
        attempt_time=timezone.now(),
        get_data="",
        post_data="",
        http_accept="",
        path_info="/accounts/login/",
    )
    AccessLog.objects.create(
        username="responder", ip_address="192.0.2.1", user_agent="test", attempt_time=timezone.now()
    )
    AccessFailureLog.objects.create(
        username="responder", ip_address="192.0.2.1", user_agent="test", attempt_time=timezone.now()
    )
    _sandbox_rows(api_service)
    return {
        "users": {
            "outsider": outsider,
            "responder": responder,
            "approver": approver,
            "auditor": auditor,
            "staff": staff,
        },
        "service": api_service,
        "draft": draft,
        "incident": incident,
        "publication": publication,
        "attempt": attempt,
        "template": template,
        "audit_export": AuditExport.objects.create(requested_by=auditor, format="csv", up_to_seq=0),
        "audit_verification": AuditVerification.objects.create(requested_by=auditor),
    }


def _sandbox_rows(service) -> None:
    from sandbox.models import SandboxFault, SandboxIncident, SandboxRequest, SandboxService

    sandbox_service, _ = SandboxService.objects.get_or_create(
        service_id=service.isdown_service_id, defaults={"name": service.name}
    )
    now = timezone.now()
    SandboxIncident.objects.create(service=sandbox_service, title="Down", created_at=now, updated_at=now)
    # A fault for a method the matrix never sends: it is there for the admin's pages, never taken.
    SandboxFault.objects.create(kind="latency", latency_ms=1, method="TRACE")
    SandboxRequest.objects.create(method="GET", path="/api/v2/incidents")


def kwargs_for(route: Route, world: dict[str, Any]) -> dict[str, str]:
    """A value for every parameter of the pattern: the Platform team's objects; in the admin, a row of the model."""
    by_name = {
        "incidents:service_detail": {"pk": world["service"].pk},
        "incidents:incident_detail": {"pk": world["incident"].pk},
        "incidents:update_new": {"pk": world["incident"].pk},
        "incidents:draft_detail": {"pk": world["draft"].pk},
        "incidents:draft_review": {"pk": world["draft"].pk},
        "incidents:draft_accept_warning": {"pk": world["draft"].pk},
        "incidents:template_list": {"team_pk": world["service"].team_id},
        "incidents:template_new": {"team_pk": world["service"].team_id},
        "incidents:template_edit": {"team_pk": world["service"].team_id, "pk": world["template"].pk},
        "incidents:template_delete": {"team_pk": world["service"].team_id, "pk": world["template"].pk},
        "incidents:draft_break_glass": {"pk": world["draft"].pk},
        "incidents:draft_post_review": {"pk": world["draft"].pk},
        "incidents:incident_next_update_due": {"pk": world["incident"].pk},
        "incidents:alerts_webhook": {"team_id": world["service"].team_id},
        "incidents:alert_settings": {"team_id": world["service"].team_id},
        "incidents:alert_token_rotate": {"team_id": world["service"].team_id},
        "incidents:alert_route_delete": {"team_id": world["service"].team_id, "pk": 1},
        "incidents:audit_export_download": {"pk": world["audit_export"].pk},
        "incidents:audit_verification": {"pk": world["audit_verification"].pk},
        "sandbox:status": {"service_id": world["service"].isdown_service_id},
        "sandbox:api_incident": {"incident_id": "1"},
        "sandbox:api_unknown": {"rest": "v2/unknown"},
        "admin:view_on_site": {
            "content_type_id": ContentType.objects.get_for_model(Membership).pk,
            "object_id": Membership.objects.order_by("pk").first().pk,
        },
        "admin:app_list": {"app_label": "incidents"},
        "admin:auth_user_password_change": {"id": world["users"]["responder"].pk},
        "route:admin/(?P<url>.*)$": {"url": "no/such/page/"},
    }
    if route.key.startswith("incidents:publication_"):
        values: dict[str, Any] = {"pk": world["publication"].pk}
    elif route.key in by_name:
        values = by_name[route.key]
    elif route.params == ("object_id",):
        values = {"object_id": _admin_object(route).pk}
    else:
        values = {}
    missing = set(route.params) - set(values)
    assert not missing, f"{route.key}: no value for {sorted(missing)}; add one to kwargs_for"
    return {name: str(value) for name, value in values.items()}


def _admin_object(route: Route):
    match = re.match(r"admin/(\w+)/(\w+)/", route.route)
    assert match, f"{route.key}: not an admin model page"
    model = apps.get_model(match[1], match[2])
    obj = model._default_manager.order_by("pk").first()
    assert obj is not None, f"{route.key}: the world has no {model.__name__}; add one to the world fixture"
    return obj


def url_for(route: Route, kwargs: dict[str, str]) -> str:
    if route.name:
        return reverse(route.name, kwargs=kwargs)
    path = route.route
    for name, value in kwargs.items():
        path = re.sub(rf"<(?:\w+:)?{name}>|\(\?P<{name}>[^)]*\)", value, path)
    return "/" + path.replace("^", "").replace("$", "").replace("\\Z", "")


def outcome(response) -> Outcome:
    if response.status_code == 302:
        location = response["Location"]
        return LOGIN if location.startswith(("/accounts/login/", "/admin/login/")) else REDIRECT
    return response.status_code


def matches(expected: Outcome, actual: Outcome) -> bool:
    return actual in expected if isinstance(expected, tuple) else actual == expected


def observe(route: Route, world: dict[str, Any], persona: str, method: str) -> Outcome:
    client = Client()
    if persona != "anonymous":
        client.force_login(world["users"][persona])
    url = url_for(route, kwargs_for(route, world))
    with transaction.atomic():
        response = getattr(client, method)(url)
        transaction.set_rollback(True)
    return outcome(response)


# --- The tests ------------------------------------------------------------------------------------------------------
def test_every_url_pattern_has_a_row_in_the_table():
    keys = [route.key for route in ROUTES]
    missing = [key for key in keys if key not in EXPECTED]
    assert not missing, "URL patterns without a rule in tests/test_permission_matrix.py EXPECTED: " + ", ".join(missing)
    stale = sorted(set(EXPECTED) - set(keys))
    assert not stale, "rules for URL patterns that no longer exist: " + ", ".join(stale)
    assert len(keys) == len(set(keys)), "two patterns share a key"


def test_the_walk_reaches_into_every_include(settings):
    keys = {route.key for route in ROUTES}
    assert {"incidents:dashboard", "admin:auth_user_change", "admin:auth_user_password_change", "healthz"} <= keys
    assert any(key.startswith("sandbox:") for key in keys) == settings.SANDBOX_ENABLED


@pytest.mark.django_db
@pytest.mark.parametrize("route", ROUTES, ids=[route.key for route in ROUTES])
def test_every_persona_gets_what_the_table_says(route, world):
    expected = EXPECTED.get(route.key)
    assert expected is not None, f"{route.key} ({route.route}) has no row in EXPECTED: decide who may use it"
    wrong = []
    for persona in PERSONAS:
        for method, want in zip(("get", "post"), expected[persona], strict=True):
            got = observe(route, world, persona, method)
            if not matches(want, got):
                wrong.append(f"{persona} {method.upper()}: expected {want}, got {got}")
    assert not wrong, f"{route.key} ({route.route}):\n  " + "\n  ".join(wrong)


@pytest.mark.django_db
def test_the_matrix_leaves_no_trace_of_its_posts(world):
    """The savepoints roll every request back: a POST that got through changed nothing the next persona sees."""
    client = Client()
    client.force_login(world["users"]["staff"])
    before = AuditEvent.objects.count()
    with transaction.atomic():
        response = client.post(reverse("admin:auth_group_add"), {"name": "made-by-the-matrix"})
        made_inside = Group.objects.filter(name="made-by-the-matrix").exists()
        transaction.set_rollback(True)
    assert response.status_code == 302
    assert made_inside  # the POST did get through ...
    assert not Group.objects.filter(name="made-by-the-matrix").exists()  # ... and left nothing behind
    assert AuditEvent.objects.count() == before
