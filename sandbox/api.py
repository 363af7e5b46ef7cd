"""The emulated IsDown incidents API: parse and validate requests, apply them, shape the answers.

Every invalid input becomes an ApiError (422 unless said otherwise) that the view turns into IsDown's error
format; nothing a client can send produces a 500. The attribute set and JSON types of an incident are
exactly those of create-an-incident.md's example.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, overload

from django.conf import settings
from django.db import transaction
from django.http import JsonResponse
from django.utils import timezone

from .models import SEVERITIES, STAGES, SandboxIncident, SandboxService

TITLE_MAX = 255
DESCRIPTION_MAX = 10_000
TITLES = {401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 422: "Unprocessable Entity"}


class ApiError(Exception):
    """An answer in IsDown's error format: {"errors": [{"status", "title", "detail"}]}."""

    def __init__(self, detail: str, status: int = 422) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status

    def response(self) -> JsonResponse:
        body = {"errors": [{"status": self.status, "title": TITLES.get(self.status, "Error"), "detail": self.detail}]}
        return JsonResponse(body, status=self.status)


# --- Timestamps -------------------------------------------------------------------------------------------
def now_ms() -> datetime:
    """Now, truncated to milliseconds: what IsDown's timestamps can express, so stored == served."""
    now = timezone.now()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 UTC with milliseconds and Z: 2024-03-15T10:00:00.000Z."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


# --- Parsing and validation -------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or ApiError. NaN/Infinity, bad UTF-8 and absurd nesting included."""
    try:
        text = raw.decode("utf-8")
        payload = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError("Request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError("Request body must be a JSON object")
    return payload


@overload
def _text(payload: dict[str, Any], key: str, *, max_length: int, required: Literal[True]) -> str: ...
@overload
def _text(payload: dict[str, Any], key: str, *, max_length: int, required: bool = False) -> str | None: ...
def _text(payload: dict[str, Any], key: str, *, max_length: int, required: bool = False) -> str | None:
    if key not in payload:
        if required:
            raise ApiError(f"{key.capitalize()} can't be blank")
        return None
    value = payload[key]
    if not isinstance(value, str):
        raise ApiError(f"{key.capitalize()} must be a string")
    if required and not value.strip():
        raise ApiError(f"{key.capitalize()} can't be blank")
    if len(value) > max_length:
        raise ApiError(f"{key.capitalize()} is too long (maximum is {max_length} characters)")
    # PostgreSQL text cannot hold NUL, nor can UTF-8 hold a lone surrogate ("\ud800" is valid JSON).
    if "\x00" in value:
        raise ApiError(f"{key.capitalize()} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(f"{key.capitalize()} is not valid Unicode") from None
    return value


def _choice(payload: dict[str, Any], key: str, choices: tuple[str, ...], message: str) -> str | None:
    if key not in payload:
        return None
    value = payload[key]
    if not isinstance(value, str) or value not in choices:
        raise ApiError(message)
    return value


STATUS_MESSAGE = "Status must be 'minor' or 'major'"
STAGE_MESSAGE = "Resolution stage must be one of: " + ", ".join(STAGES)


def _service(payload: dict[str, Any]) -> SandboxService:
    if "service_id" not in payload:
        raise ApiError("Service can't be blank")
    value = payload["service_id"]
    # bool is an int in Python, not in JSON: true is not a service id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError("Service id must be an integer")
    service = SandboxService.objects.filter(service_id=value).first()
    if service is None:
        raise ApiError("Service not found or not a custom service you own")
    return service


# --- Operations -------------------------------------------------------------------------------------------
def create(payload: dict[str, Any]) -> SandboxIncident:
    """POST /incidents: one incident with one update, resolved at once if the stage is ``resolved``."""
    service = _service(payload)
    title = _text(payload, "title", max_length=TITLE_MAX, required=True)
    status = _choice(payload, "status", SEVERITIES, STATUS_MESSAGE) or "minor"
    description = _text(payload, "description", max_length=DESCRIPTION_MAX) or ""
    stage = _choice(payload, "resolution_stage", STAGES, STAGE_MESSAGE) or "investigating"
    now = now_ms()
    resolved = stage == "resolved"
    return SandboxIncident.objects.create(
        service=service,
        title=title,
        description=description,
        status=status,
        resolved=resolved,
        created_at=now,
        updated_at=now,
        resolved_at=now if resolved else None,
        updates=[{"status": stage, "created_at": iso(now), "description": description}],
    )


def find(incident_id: str, *, for_update: bool = False) -> SandboxIncident:
    """The incident with this path id, or a 404 ApiError. Path ids are integers."""
    if not incident_id.isascii() or not incident_id.isdigit() or len(incident_id) > 18:
        raise ApiError("Incident not found", status=404)
    queryset = SandboxIncident.objects.select_related("service")
    if for_update:
        queryset = queryset.select_for_update()
    incident = queryset.filter(pk=int(incident_id)).first()
    if incident is None:
        raise ApiError("Incident not found", status=404)
    return incident


def patch(incident_id: str, payload: dict[str, Any]) -> SandboxIncident:
    """PATCH /incidents/:id. ``description`` and ``resolution_stage`` together append one update (or 422);
    ``title``/``status`` change in place. Row-locked, so concurrent PATCHes each append their update.
    A stage other than ``resolved`` on a resolved incident reopens it [GUESS: not documented]."""
    with transaction.atomic():
        incident = find(incident_id, for_update=True)
        title = _text(payload, "title", max_length=TITLE_MAX)
        if title is not None and not title.strip():
            raise ApiError("Title can't be blank")
        status = _choice(payload, "status", SEVERITIES, STATUS_MESSAGE)
        description = _text(payload, "description", max_length=DESCRIPTION_MAX)
        stage = _choice(payload, "resolution_stage", STAGES, STAGE_MESSAGE)
        if (description is None) != (stage is None):
            raise ApiError("Description and resolution_stage must be sent together to post an update")
        if title is None and status is None and stage is None:
            return incident
        now = now_ms()
        if title is not None:
            incident.title = title
        if status is not None:
            incident.status = status
        if stage is not None:
            incident.updates = [
                *incident.updates,
                {"status": stage, "created_at": iso(now), "description": description},
            ]
            incident.description = description or ""
            if stage == "resolved" and not incident.resolved:
                incident.resolved, incident.resolved_at = True, now
            elif stage != "resolved":
                incident.resolved, incident.resolved_at = False, None
        incident.updated_at = now
        incident.save()
    return incident


def delete(incident_id: str) -> None:
    with transaction.atomic():
        find(incident_id, for_update=True).delete()


@dataclass(frozen=True)
class Page:
    """One page of the list: its incidents and the number of the next page (None on the last one)."""

    incidents: list[SandboxIncident]
    number: int
    next_number: int | None


def _positive_int(raw: str, name: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise ApiError(f"{name} must be a positive integer")
    return int(raw)


def list_for(service_id: str | None, *, page: str | None = None, page_size: int | None = None) -> Page:
    """GET /incidents[?service_id=N][&page=K], newest first, ``page_size`` a page. [GUESS] the shape of IsDown's
    list call and its pagination (undocumented): JSON:API's ``links.next``, absolute, null on the last page."""
    size = page_size or settings.SANDBOX_PAGE_SIZE
    number = 1 if page is None else _positive_int(page, "Page")
    queryset = SandboxIncident.objects.select_related("service").order_by("-created_at", "-id")
    if service_id is not None:
        service = SandboxService.objects.filter(service_id=_positive_int(service_id, "Service id")).first()
        if service is None:
            raise ApiError("Service not found")
        queryset = queryset.filter(service=service)
    start = (number - 1) * size
    rows = list(queryset[start : start + size + 1])
    return Page(incidents=rows[:size], number=number, next_number=number + 1 if len(rows) > size else None)


# --- Serialization ----------------------------------------------------------------------------------------
def resource(incident: SandboxIncident) -> dict[str, Any]:
    """IsDown's ``data`` object for one incident: the keys and JSON types of the documented example."""
    service = incident.service
    return {
        "id": str(incident.pk),
        "type": "incidents",
        "attributes": {
            "url": None,
            "title": incident.title,
            "description": incident.description,
            "status": incident.status,
            "resolved": incident.resolved,
            "created_at": iso(incident.created_at),
            "resolved_at": iso(incident.resolved_at),
            "updated_at": iso(incident.updated_at),
            "service_id": service.service_id,
            "service": service.name,
            "service_status_url": None,
            "service_urlname": service.urlname,
            "user_generated": False,
            "severity_from_provider": None,
            "components": [],
            "updates": list(incident.updates),
            "isdown_url": None,
        },
    }


def document(incident: SandboxIncident, status: int = 200) -> JsonResponse:
    return JsonResponse({"data": resource(incident)}, status=status)


def collection(page: Page, *, next_url: str | None) -> JsonResponse:
    return JsonResponse({"data": [resource(incident) for incident in page.incidents], "links": {"next": next_url}})
