"""The fuzz tests' world (every persona, and an object in every state a form is shown for), the counts they keep,
and the summary they print.

``FUZZ_EXAMPLES``: generated inputs per URL pattern (30 in ``make test``; ``make fuzz`` sets enough for
10,000 in all). ``FUZZ_MIN_INPUTS``: if set, the session fails when fewer inputs than that were tried, so a
run that claims a count has tried it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.http import HttpResponse
from django.test import Client

from incidents import workflow
from incidents.input_guards import refuse_foreign_charsets
from incidents.models import DraftKind, DraftTemplate, Publication, PublicationState, Severity, Stage
from sandbox import api as sandbox_api
from sandbox import faults
from sandbox.registry import register_service
from tests.factories import IncidentFactory, UserFactory
from tests.publishing.factories import approved_publication

from .targets import Target

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or "30")
FUZZ_MIN_INPUTS = int(os.environ.get("FUZZ_MIN_INPUTS") or "0")
ANONYMOUS = "anonymous"
# Anonymous twice: the sign-in pages and the sandbox's API are theirs (anyone signed in is sent on elsewhere).
PERSONAS = (ANONYMOUS, ANONYMOUS, "responder", "approver", "auditor", "outsider", "staff", "plain_staff")

# Kept for the whole session: inputs tried, responses by status class, 500s.
STATS: Counter[str] = Counter()


def record_response(status: int) -> None:
    STATS["inputs"] += 1
    STATS[f"{status // 100}xx"] += 1
    if status == 500:
        STATS["500"] += 1


def summary() -> str:
    classes = ", ".join(f"{name} {STATS[name]}" for name in ("2xx", "3xx", "4xx", "5xx"))
    return f"fuzz: {STATS['inputs']} inputs tried; responses {classes}; 500s: {STATS['500']}"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if STATS["inputs"]:
        terminalreporter.write_sep("=", "fuzz")
        terminalreporter.write_line(summary())


def pytest_sessionfinish(session, exitstatus) -> None:
    if FUZZ_MIN_INPUTS and STATS["inputs"] < FUZZ_MIN_INPUTS and exitstatus == 0:
        session.exitstatus = 1
        print(f"\nfuzz: only {STATS['inputs']} inputs were tried, fewer than FUZZ_MIN_INPUTS={FUZZ_MIN_INPUTS}")


# --- What went wrong, as Django logs it -----------------------------------------------------------------------
class ErrorRecords(logging.Handler):
    """Every record ``django.request`` logs at ERROR (each unhandled exception leaves one)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def describe(self, record: logging.LogRecord) -> str:
        return logging.Formatter("%(levelname)s %(name)s %(message)s").format(record)


@pytest.fixture
def request_errors():
    handler = ErrorRecords()
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


# --- The world ------------------------------------------------------------------------------------------------
@pytest.fixture
def plain_staff(db):
    """Staff without superuser, on no team."""
    return UserFactory(username="plain_staff", is_staff=True, is_superuser=False)


def _set_state(publication: Publication, state: str) -> Publication:
    Publication.objects.filter(pk=publication.pk).update(state=state)
    publication.refresh_from_db()
    return publication


FIELDS = {"title": "API errors", "severity": Severity.MINOR, "description": "Looking.", "stage": Stage.INVESTIGATING}


@pytest.fixture
def world(
    responder, approver, auditor, outsider, staff, plain_staff, api_service, dashboard_service, pipeline_service
) -> dict[str, object]:
    """Something behind every form: an incident on IsDown, drafts (editable, in review, an update), publications
    waiting for a human (failed, needs attention, duplicated) and another team's, the sandbox's service, an
    incident and a fault there."""
    incident = IncidentFactory(service=api_service, remote_id="55001", title="API errors")
    editable = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    in_review = workflow.create(user=responder, service=dashboard_service, kind=DraftKind.OPEN, fields=FIELDS)
    workflow.submit(draft_id=in_review.pk, user=responder)
    update = workflow.create(
        user=responder,
        service=api_service,
        kind=DraftKind.UPDATE,
        incident=incident,
        fields={**FIELDS, "stage": Stage.IDENTIFIED, "description": "Found it."},
    )
    failed = _set_state(approved_publication(service=api_service, author=responder), PublicationState.FAILED)
    attention = _set_state(
        approved_publication(service=dashboard_service, author=responder, title="Slow"),
        PublicationState.NEEDS_ATTENTION,
    )
    duplicated = _set_state(
        approved_publication(service=api_service, author=responder, title="Twice"),
        PublicationState.DUPLICATE_DETECTED,
    )
    other_team = approved_publication(service=pipeline_service, author=outsider, title="Theirs")
    sandbox_service = register_service(1001, "API")
    sandbox_incident = sandbox_api.create({"service_id": 1001, "title": "In the sandbox", "description": "x"})
    # A queued fault puts the Clear button on the control page, and sends DELETEs through the fault path (no delay).
    faults.add_fault(kind="latency", latency_ms=0, count=faults.COUNT_MAX, method="DELETE")
    templates = [
        DraftTemplate.objects.create(team=api_service.team, kind="open", name="Outage", title="{services} down"),
        DraftTemplate.objects.create(team=pipeline_service.team, kind="resolve", name="Resolved", stage="resolved"),
    ]
    return {
        "teams": [api_service.team, pipeline_service.team],
        "templates": templates,
        "users": [responder, approver, auditor, outsider, staff, plain_staff],
        "incidents": [incident],
        "drafts": [editable, in_review, update, failed.draft, other_team.draft],
        "publications": [failed, attention, duplicated, other_team],
        "services": [api_service, dashboard_service, pipeline_service],
        "sandbox_services": [sandbox_service],
        "sandbox_incidents": [sandbox_incident],
    }


def _ids(objects, attribute: str = "pk") -> list[str]:
    return [str(getattr(obj, attribute)) for obj in objects]


def known_ids(world: dict[str, object], target: Target) -> dict[str, list[str]]:
    """The ids worth trying in ``target``'s path, by parameter name (``*``: any parameter)."""
    every = sorted({value for key, objects in world.items() for value in _ids(objects)})
    known: dict[str, list[str]] = {"*": every}
    name = target.name
    if name.startswith("sandbox:"):
        known["service_id"] = _ids(world["sandbox_services"], "service_id")
        known["incident_id"] = _ids(world["sandbox_incidents"])
    elif name.startswith("admin:"):
        for model in admin.site._registry:
            if f":{model._meta.app_label}_{model._meta.model_name}_" in name:
                rows = model._default_manager.order_by("pk")[:3]
                known["object_id"] = [str(pk) for pk in rows.values_list("pk", flat=True)]
        known["id"] = _ids(world["users"])
        known["content_type_id"] = [str(ContentType.objects.get_for_model(type(world["drafts"][0])).pk)]
    else:
        known["team_pk"] = _ids(world["teams"])
        for word, key in (
            ("template", "templates"),
            ("publication", "publications"),
            ("draft", "drafts"),
            ("update_new", "incidents"),
            ("incident", "incidents"),
            ("service", "services"),
        ):
            if word in name:
                known["pk"] = _ids(world[key])
                break
    return known


@pytest.fixture
def sessions(world) -> dict[str, str | None]:
    """Each persona's session cookie (None: anonymous). Every example gets a fresh client with it, so a logout
    or a password change (rolled back with the example) leaves the next example signed in as before."""
    cookies: dict[str, str | None] = {ANONYMOUS: None}
    for user in world["users"]:
        client = Client()
        client.force_login(user)
        cookies[user.username] = client.cookies[settings.SESSION_COOKIE_NAME].value
    return cookies


class GuardedHandler:
    """The test client's handler behind the guard that ``isdown_admin/wsgi.py`` puts in front of Django (the real
    ``refuse_foreign_charsets``), so the fuzz meets the stack the servers run."""

    def __init__(self, handler) -> None:
        self.handler = handler

    def __call__(self, environ):
        reached: list[HttpResponse] = []
        answer: dict[str, object] = {}

        def django(environ, start_response):
            reached.append(self.handler(environ))
            return []

        def start_response(status, headers, exc_info=None) -> None:
            answer.update(status=status, headers=headers)

        body = b"".join(refuse_foreign_charsets(django)(environ, start_response))
        if reached:
            return reached[0]
        response = HttpResponse(body, status=int(str(answer["status"]).split()[0]))
        for name, value in answer["headers"]:
            response[name] = value
        response.wsgi_request = None
        return response


def client_as(sessions: dict[str, str | None], persona: str) -> Client:
    client = Client(raise_request_exception=False)
    client.handler = GuardedHandler(client.handler)
    if sessions[persona]:
        client.cookies[settings.SESSION_COOKIE_NAME] = sessions[persona]
    return client
