"""The IsDown API client: the only module that speaks HTTP to IsDown (or to the sandbox that emulates it).

No Django imports: settings are passed in. Every call has explicit timeouts, never follows a redirect, and
turns each outcome into either a typed result or one of a small hierarchy of errors that tells the caller
what is safe to do next:

- ``NotSent``        the request never left (connect error, DNS, connect/pool timeout): safe to send again.
- ``RateLimited``    429, or 503 with ``Retry-After``: not processed; wait ``retry_after`` seconds (or back off).
- ``Rejected``       any other 4xx, and 3xx: permanent; ``detail`` carries IsDown's message for the user.
- ``OutcomeUnknown`` read/write timeout, connection dropped after sending, 500/502/504, 503 without
                     ``Retry-After`` (and any other 5xx): it may have been applied; reconcile, never re-send blind.
- ``BadResponse``    a 2xx whose body is not IsDown's envelope: it was applied, but we cannot read the answer.

Invariant: the API key appears only in the ``Authorization`` header of outgoing requests. It is never in a
log line, an exception message, a repr, or an ``Exchange``; response text is scrubbed of it defensively.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

logger = logging.getLogger(__name__)

EXCERPT_LIMIT = 2000
CONNECT_TIMEOUT_CAP = 5.0
STAGES = ("investigating", "identified", "monitoring", "resolved")
UPDATE_FIELDS = frozenset({"title", "status", "description", "resolution_stage"})
INCIDENTS_PATH = "/api/v2/incidents"


# --- Results ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteUpdate:
    """One entry of an incident's ``updates`` list. IsDown gives updates no id."""

    stage: str
    description: str
    created_at: datetime


@dataclass(frozen=True)
class RemoteIncident:
    """An incident as IsDown holds it. ``severity`` is IsDown's ``status`` attribute (minor|major)."""

    id: str
    title: str
    description: str
    severity: str
    resolved: bool
    created_at: datetime
    updated_at: datetime | None
    resolved_at: datetime | None
    service_id: int
    service_name: str
    url: str | None
    updates: tuple[RemoteUpdate, ...]  # oldest first by created_at; server order kept for equal times

    @property
    def stage(self) -> str:
        """The current stage: the status of the latest update (IsDown's definition)."""
        return self.updates[-1].stage if self.updates else "investigating"


@dataclass(frozen=True)
class Exchange:
    """What a publisher records of one HTTP call. Never holds the request headers (the key lives there)."""

    status_code: int
    latency_ms: int
    excerpt: str  # the first EXCERPT_LIMIT characters of the response body


@dataclass(frozen=True)
class Result:
    incident: RemoteIncident
    exchange: Exchange


@dataclass(frozen=True)
class RequestSpec:
    """The exact request a call makes, as a publisher stores and hashes it before sending."""

    method: str
    path: str
    body: dict[str, Any] | None


# --- Errors -------------------------------------------------------------------------------------------------
class IsDownError(Exception):
    """Base of every client error. ``status_code``/``latency_ms`` are None when no response arrived."""

    def __init__(
        self, detail: str, *, status_code: int | None = None, latency_ms: int | None = None, excerpt: str = ""
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code
        self.latency_ms = latency_ms
        self.excerpt = excerpt

    @property
    def exchange(self) -> Exchange | None:
        """The response as an Exchange, when there was one."""
        if self.status_code is None:
            return None
        return Exchange(self.status_code, self.latency_ms or 0, self.excerpt)

    def __str__(self) -> str:
        prefix = f"HTTP {self.status_code}: " if self.status_code is not None else ""
        return f"{prefix}{self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code!r}, detail={self.detail!r})"


class NotSent(IsDownError):
    """The request never reached IsDown: sending it again cannot duplicate anything."""


class RateLimited(IsDownError):
    """IsDown (or a proxy in front of it) refused to process the request for now."""

    def __init__(self, detail: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"RateLimited(status_code={self.status_code!r}, retry_after={self.retry_after!r})"


class Rejected(IsDownError):
    """A permanent refusal (4xx other than 429, or a redirect): sending the same request again will fail again."""


class OutcomeUnknown(IsDownError):
    """The request may or may not have been applied: reconcile before sending again."""


class BadResponse(IsDownError):
    """A 2xx whose body is not IsDown's envelope: applied, but the answer is unreadable."""


# --- Parsing ------------------------------------------------------------------------------------------------
def _timestamp(value: Any, field: str, *, nullable: bool = False) -> datetime | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise BadResponse(f"{field} is not a timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadResponse(f"{field} is not an ISO 8601 timestamp: {value[:40]!r}") from None
    # IsDown sends UTC with a Z; a naive value is read as UTC rather than as server-local time.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _string(attributes: dict[str, Any], key: str, *, nullable: bool = False) -> str | None:
    value = attributes.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise BadResponse(f"{key} is not a string")
    return value


def parse_incident(data: dict) -> RemoteIncident:
    """Parse the ``data`` object of IsDown's envelope. Raises BadResponse for anything that does not fit."""
    if not isinstance(data, dict):
        raise BadResponse("data is not an object")
    raw_id = data.get("id")
    # The docs promise a string id; an integer is tolerated and normalised, anything else is refused.
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or str(raw_id) == "":
        raise BadResponse("id is missing or not a string")
    attributes = data.get("attributes")
    if not isinstance(attributes, dict):
        raise BadResponse("attributes is missing or not an object")
    resolved = attributes.get("resolved")
    if not isinstance(resolved, bool):
        raise BadResponse("resolved is not a boolean")
    service_id = attributes.get("service_id")
    if isinstance(service_id, bool) or not isinstance(service_id, int):
        raise BadResponse("service_id is not an integer")
    raw_updates = attributes.get("updates", [])
    if not isinstance(raw_updates, list):
        raise BadResponse("updates is not a list")
    updates = []
    for index, item in enumerate(raw_updates):
        if not isinstance(item, dict):
            raise BadResponse(f"updates[{index}] is not an object")
        description = item.get("description")
        updates.append(
            RemoteUpdate(
                stage=_string(item, "status") or "",
                description="" if description is None else _string(item, "description") or "",
                created_at=_timestamp(item.get("created_at"), f"updates[{index}].created_at"),  # type: ignore[arg-type]
            )
        )
    # "Ordered list", direction undocumented: sort ourselves. sorted() is stable, so ties keep server order.
    updates.sort(key=lambda update: update.created_at)
    description = attributes.get("description")
    return RemoteIncident(
        id=str(raw_id),
        title=_string(attributes, "title") or "",
        description="" if description is None else _string(attributes, "description") or "",
        severity=_string(attributes, "status") or "",
        resolved=resolved,
        created_at=_timestamp(attributes.get("created_at"), "created_at"),  # type: ignore[arg-type]
        updated_at=_timestamp(attributes.get("updated_at"), "updated_at", nullable=True),
        resolved_at=_timestamp(attributes.get("resolved_at"), "resolved_at", nullable=True),
        service_id=service_id,
        service_name=_string(attributes, "service", nullable=True) or "",
        url=_string(attributes, "url", nullable=True),
        updates=tuple(updates),
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if seconds == seconds else None  # NaN is unreadable, not "now"
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _error_detail(response: httpx.Response) -> str | None:
    """IsDown's ``errors[0].detail`` (or title), when the body is IsDown's error format."""
    try:
        payload = response.json()
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(payload, dict) and isinstance(payload.get("errors"), list) and payload["errors"]:
        first = payload["errors"][0]
        if isinstance(first, dict):
            for key in ("detail", "title"):
                if isinstance(first.get(key), str) and first[key]:
                    return first[key]
    return None


# --- Request builders ---------------------------------------------------------------------------------------
def incident_path(remote_id: str) -> str:
    # Quoted so that an odd id can only ever name one incident, never another path.
    return f"{INCIDENTS_PATH}/{quote(str(remote_id), safe='')}"


def create_request(
    *,
    service_id: int,
    title: str,
    status: str = "minor",
    description: str = "",
    resolution_stage: str = "investigating",
) -> RequestSpec:
    """The POST that creates an incident, with every documented field sent explicitly."""
    body = {
        "service_id": service_id,
        "title": title,
        "status": status,
        "description": description,
        "resolution_stage": resolution_stage,
    }
    return RequestSpec("POST", INCIDENTS_PATH, body)


def update_request(remote_id: str, **fields: Any) -> RequestSpec:
    """The PATCH for an incident. Unknown fields are a programming error; IsDown's pairing rule is the server's."""
    unknown = set(fields) - UPDATE_FIELDS
    if unknown:
        raise TypeError(f"unknown incident fields: {sorted(unknown)}")
    return RequestSpec("PATCH", incident_path(remote_id), dict(fields))


def encode_body(body: dict[str, Any] | None) -> bytes | None:
    """The exact bytes sent for a body: compact, key order kept, UTF-8. Deterministic, so it can be hashed."""
    if body is None:
        return None
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


# --- The client ---------------------------------------------------------------------------------------------
class IsDownClient:
    """One IsDown account at one base URL. Thread-unsafe like the httpx.Client inside; one per task is fine."""

    def __init__(
        self, base_url: str, api_key: str, timeout: float, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._secret = api_key
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": "isdown-admin",
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_CAP)),
            # A redirect can drop the body or hand the Authorization header to another host: never follow.
            follow_redirects=False,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"IsDownClient(base_url={self.base_url!r}, timeout={self.timeout!r})"

    def __enter__(self) -> IsDownClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "[redacted]") if self._secret else text

    def _exchange(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[httpx.Response, Exchange]:
        """Make one call; return the 2xx response, or raise the error class that says what is safe."""
        content = encode_body(body)
        headers = {"Content-Type": "application/json"} if content is not None else {}
        started = time.monotonic()

        def elapsed() -> int:
            return round((time.monotonic() - started) * 1000)

        try:
            response = self._http.request(method, path, content=content, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
            self._log(method, path, None, elapsed(), type(exc).__name__)
            raise NotSent(self._describe(exc), latency_ms=elapsed()) from None
        except httpx.TransportError as exc:
            # Read/write timeouts, a connection dropped after sending (RemoteProtocolError, ReadError,
            # WriteError) and anything unforeseen: the request may have been processed.
            self._log(method, path, None, elapsed(), type(exc).__name__)
            raise OutcomeUnknown(self._describe(exc), latency_ms=elapsed()) from None
        latency_ms = elapsed()
        excerpt = self._scrub(response.text[:EXCERPT_LIMIT])
        exchange = Exchange(response.status_code, latency_ms, excerpt)
        self._log(method, path, response.status_code, latency_ms, None)
        self._raise_for_status(response, exchange)
        return response, exchange

    def _describe(self, exc: Exception) -> str:
        message = self._scrub(str(exc))
        return f"{type(exc).__name__}: {message}" if message else type(exc).__name__

    def _log(self, method: str, path: str, status: int | None, latency_ms: int, error: str | None) -> None:
        # Method, path, outcome and time only: never headers, never bodies.
        logger.info("isdown %s %s -> %s in %d ms", method, self._scrub(path), status if status else error, latency_ms)

    def _raise_for_status(self, response: httpx.Response, exchange: Exchange) -> None:
        code = response.status_code
        if 200 <= code < 300:
            return
        facts = {"status_code": code, "latency_ms": exchange.latency_ms, "excerpt": exchange.excerpt}
        detail = _error_detail(response)
        detail = self._scrub(detail) if detail else None
        retry_header = response.headers.get("Retry-After")
        if code == 429 or (code == 503 and retry_header is not None):
            raise RateLimited(detail or "rate limited", retry_after=parse_retry_after(retry_header), **facts)
        if 300 <= code < 400:
            location = self._scrub(response.headers.get("Location", ""))
            raise Rejected(f"unexpected redirect to {location or '(no location)'}; not followed", **facts)
        if 400 <= code < 500:
            raise Rejected(detail or response.reason_phrase or "rejected", **facts)
        # 500, 502, 504, 503 without Retry-After, and any other status: the server may have acted.
        raise OutcomeUnknown(detail or response.reason_phrase or "server error", **facts)

    @staticmethod
    def _json(response: httpx.Response, exchange: Exchange) -> Any:
        try:
            payload = response.json()
        except (ValueError, UnicodeDecodeError):
            raise BadResponse(
                "response body is not JSON",
                status_code=exchange.status_code,
                latency_ms=exchange.latency_ms,
                excerpt=exchange.excerpt,
            ) from None
        if not isinstance(payload, dict) or "data" not in payload:
            raise BadResponse(
                "response is not IsDown's envelope",
                status_code=exchange.status_code,
                latency_ms=exchange.latency_ms,
                excerpt=exchange.excerpt,
            )
        return payload["data"]

    @staticmethod
    def _with_exchange(error: BadResponse, exchange: Exchange) -> BadResponse:
        return BadResponse(
            error.detail, status_code=exchange.status_code, latency_ms=exchange.latency_ms, excerpt=exchange.excerpt
        )

    def send(self, method: str, path: str, body: dict | None) -> Result:
        """Send one request whose 2xx answer is a single incident; the generic call a publisher replays."""
        response, exchange = self._exchange(method, path, body)
        data = self._json(response, exchange)
        try:
            incident = parse_incident(data)
        except BadResponse as error:
            raise self._with_exchange(error, exchange) from None
        return Result(incident, exchange)

    def send_spec(self, spec: RequestSpec) -> Result:
        return self.send(spec.method, spec.path, spec.body)

    def create_incident(
        self,
        *,
        service_id: int,
        title: str,
        status: str = "minor",
        description: str = "",
        resolution_stage: str = "investigating",
    ) -> RemoteIncident:
        spec = create_request(
            service_id=service_id,
            title=title,
            status=status,
            description=description,
            resolution_stage=resolution_stage,
        )
        return self.send_spec(spec).incident

    def get_incident(self, remote_id: str) -> RemoteIncident:
        return self.send("GET", incident_path(remote_id), None).incident

    def update_incident(self, remote_id: str, **fields: Any) -> RemoteIncident:
        return self.send_spec(update_request(remote_id, **fields)).incident

    def list_incidents(self, service_id: int) -> list[RemoteIncident]:
        """The service's incidents, newest first as the server gives them. [GUESS] shape: ?service_id=N."""
        response, exchange = self._exchange("GET", f"{INCIDENTS_PATH}?service_id={int(service_id)}", None)
        data = self._json(response, exchange)
        if not isinstance(data, list):
            raise BadResponse(
                "data is not a list",
                status_code=exchange.status_code,
                latency_ms=exchange.latency_ms,
                excerpt=exchange.excerpt,
            )
        try:
            return [parse_incident(item) for item in data]
        except BadResponse as error:
            raise self._with_exchange(error, exchange) from None

    def delete_incident(self, remote_id: str) -> None:
        """Delete an incident. Already gone (404) counts as done; any 2xx body is accepted."""
        try:
            self._exchange("DELETE", incident_path(remote_id), None)
        except Rejected as error:
            if error.status_code != 404:
                raise
