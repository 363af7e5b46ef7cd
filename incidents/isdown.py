"""The IsDown API client: the only module that speaks HTTP to IsDown (or to the sandbox that emulates it), and
the one place that builds the exact requests this app sends.

No Django imports: settings are passed in. Every call has one wall-clock deadline (``timeout`` seconds, DNS
included), never follows a redirect, and turns each outcome into either a typed result or one of a small
hierarchy of errors that tells the caller what is safe to do next:

- ``NotSent``        the request never left (DNS, connect error or timeout, or the deadline passed before the
                     first byte was written): safe to send again.
- ``RateLimited``    429, or 503 with ``Retry-After``: not processed; wait ``retry_after`` seconds (or back off).
- ``Rejected``       any other 4xx, and 3xx: permanent; ``detail`` carries IsDown's message for the user.
- ``OutcomeUnknown`` read/write timeout, connection dropped after sending, 500/502/504, 503 without
                     ``Retry-After`` (and any other 5xx): it may have been applied; reconcile, never re-send blind.
- ``BadResponse``    a 2xx whose body is not IsDown's envelope: it was applied, but we cannot read the answer.

The deadline is what lets a publisher fence its sends: a request whose deadline has passed is never started,
however long name resolution, a starved CPU or a paused VM held it up, so a send cannot leave after the lease
that covered it ran out. (httpx times each phase but not ``getaddrinfo``, nor the whole call: the transport
below does both.)

Reading is tolerant: any string IsDown sends for a title, severity or stage is kept as sent (a new severity, a
longer title), NUL characters and lone surrogates are replaced (PostgreSQL cannot store them), and the raw
``data`` object travels with the parsed incident.

Invariant: the API key appears only in the ``Authorization`` header of outgoing requests. It is never in a
log line, an exception message, a repr, or an ``Exchange``; response text is scrubbed of it defensively.
"""

from __future__ import annotations

import contextlib
import contextvars
import email.utils
import hashlib
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict
from urllib.parse import quote, urlsplit

import httpcore
import httpx
from httpcore._backends.sync import SyncStream

logger = logging.getLogger(__name__)

EXCERPT_LIMIT = 2000
INCIDENTS_PATH = "/api/v2/incidents"
# Pages a listing follows before it gives up proving anything (the list is newest first: ours is near the top).
DEFAULT_MAX_PAGES = 50


# --- Requests -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """One exact call: method, path, and the JSON body as the text that goes on the wire ("" for none)."""

    method: str
    path: str
    body: str = ""

    @property
    def sha256(self) -> str:
        """What an approval binds: the method, the path and the body's exact bytes."""
        return hashlib.sha256(f"{self.method} {self.path}\n".encode() + self.body.encode("utf-8")).hexdigest()

    @property
    def content(self) -> bytes | None:
        return self.body.encode("utf-8") if self.body else None

    def json(self) -> dict[str, Any]:
        return json.loads(self.body) if self.body else {}


def requests_sha256(hashes: Sequence[tuple[int, str]]) -> str:
    """One hash over a set of requests, given as ``(position, sha256)``: what a revision's review approves."""
    lines = "\n".join(f"{position} {sha}" for position, sha in sorted(hashes))
    return hashlib.sha256(lines.encode()).hexdigest()


def encode_body(body: dict[str, Any]) -> str:
    """A body's wire text: compact, key order kept, UTF-8 as is (a lone surrogate, which UTF-8 cannot carry,
    becomes U+FFFD). Deterministic, so it can be hashed."""
    return clean_text(json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False))


def incident_path(remote_id: str) -> str:
    # Quoted so that an odd id can only ever name one incident, never another path.
    return f"{INCIDENTS_PATH}/{quote(str(remote_id), safe='')}"


def create_request(*, service_id: int, title: str, severity: str, description: str, stage: str) -> Request:
    """The POST that creates an incident, every documented field sent explicitly."""
    body = {
        "service_id": int(service_id),
        "title": title,
        "status": severity,
        "description": description,
        "resolution_stage": stage,
    }
    return Request("POST", INCIDENTS_PATH, encode_body(body))


def update_request(
    remote_id: str,
    *,
    title: str | None = None,
    severity: str | None = None,
    description: str | None = None,
    stage: str | None = None,
) -> Request:
    """The PATCH for an incident: only the fields given. IsDown posts an update only when ``description`` and
    ``stage`` come together; a caller that gives one gives both (the form enforces it)."""
    body: dict[str, Any] = {}
    if title is not None:
        body["title"] = title
    if severity is not None:
        body["status"] = severity
    if description is not None or stage is not None:
        body["description"] = description or ""
        body["resolution_stage"] = stage or ""
    return Request("PATCH", incident_path(remote_id), encode_body(body))


# --- Results ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteUpdate:
    """One entry of an incident's ``updates`` list. IsDown gives updates no id."""

    stage: str
    description: str
    created_at: datetime


@dataclass(frozen=True)
class RemoteIncident:
    """An incident as IsDown holds it. ``severity`` is IsDown's ``status`` attribute (minor|major, or whatever
    IsDown sends one day); ``raw`` is the ``data`` object as it came."""

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
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

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
class Listing:
    """A service's incidents as far as they were read. ``complete`` is True when the list was read to its end,
    or back past ``since`` in a newest-first order; otherwise ``reason`` says why nothing more can be shown."""

    incidents: tuple[RemoteIncident, ...]
    complete: bool
    reason: str = ""
    pages: int = 1


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


class _Facts(TypedDict):
    """What an error knows of the response that caused it."""

    status_code: int
    latency_ms: int
    excerpt: str


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


# --- The deadline ---------------------------------------------------------------------------------------------
class _DeadlinePassed(Exception):
    """Raised inside the transport when a call's deadline passed before any byte of the request was written."""


@dataclass
class _Deadline:
    at: float  # time.monotonic()
    wrote: bool = False  # whether any byte of the current request has been written

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def cap(self, timeout: float | None, expired: type[Exception]) -> float:
        left = self.remaining()
        if left <= 0:
            raise expired("the call's deadline passed")
        return left if timeout is None else min(timeout, left)


_current_deadline: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar("isdown_deadline", default=None)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound every call made inside the block, by any client, by one wall-clock deadline ``seconds`` from now. A
    deadline already in force (an outer block) is kept. A publisher starts it before it writes the lease that
    covers the call, so the call can never outlive the lease."""
    if _current_deadline.get() is not None:
        yield
        return
    token = _current_deadline.set(_Deadline(time.monotonic() + seconds))
    try:
        yield
    finally:
        _current_deadline.reset(token)


def _resolve(host: str, port: int, timeout: float) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` bounded by ``timeout`` (it has none of its own): a stalled lookup is left behind in a
    daemon thread and reported as a connect timeout, so the request it was for is never sent."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)  # a literal address: nothing to look up
    except OSError:
        pass
    found: list[list[tuple[Any, ...]]] = []
    failed: list[Exception] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as exc:  # OSError, and UnicodeError for a label over 63 characters
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name=f"resolve {host}", daemon=True).start()
    if not done.wait(timeout):
        raise httpcore.ConnectTimeout(f"name resolution of {host} took longer than {timeout:.1f} s")
    if failed:
        raise httpcore.ConnectError(str(failed[0]))
    return found[0]


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose reads and writes never outlast the current call's deadline, and whose first write
    of a request refuses to start once that deadline has passed."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        deadline = _current_deadline.get()
        if deadline is not None:
            timeout = deadline.cap(timeout, httpcore.ReadTimeout)
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        deadline = _current_deadline.get()
        if deadline is not None and buffer:
            if deadline.remaining() <= 0 and not deadline.wrote:
                raise _DeadlinePassed
            timeout = deadline.cap(timeout, httpcore.WriteTimeout)
            deadline.wrote = True
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        deadline = _current_deadline.get()
        if deadline is not None:
            timeout = deadline.cap(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.SyncBackend):
    """TCP connects that resolve names within the deadline and return deadline-bound streams."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        deadline = _current_deadline.get()
        limit = deadline.cap(timeout, httpcore.ConnectTimeout) if deadline is not None else (timeout or 30.0)
        last_error: Exception | None = None
        for family, kind, proto, _, address in _resolve(host, port, limit):
            left = deadline.cap(timeout, httpcore.ConnectTimeout) if deadline is not None else limit
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(left)
                if local_address:
                    sock.bind((local_address, 0))
                sock.connect(address)
            except TimeoutError as exc:
                sock.close()
                last_error = httpcore.ConnectTimeout(str(exc))
                continue
            except OSError as exc:
                sock.close()
                last_error = httpcore.ConnectError(str(exc))
                continue
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return _DeadlineStream(SyncStream(sock))
        raise last_error or httpcore.ConnectError(f"no address for {host}")


_shared_tls: tuple[int, ssl.SSLContext] | None = None
_shared_tls_lock = threading.Lock()
# A context that can make no TLS connection at all (no CA loaded: every certificate fails): what a plain-http
# client is given, so that building one never loads a CA bundle (httpx loads certifi's, ~20 ms, for verify=True).
_NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def shared_tls_context() -> ssl.SSLContext:
    """The TLS context every https client of this process shares: httpx's default (certifi's CA bundle, or
    SSL_CERT_FILE / SSL_CERT_DIR), built once per process (after a fork, the child builds its own)."""
    global _shared_tls
    with _shared_tls_lock:
        if _shared_tls is None or _shared_tls[0] != os.getpid():
            _shared_tls = (os.getpid(), httpx.create_ssl_context())
        return _shared_tls[1]


def _transport(base_url: str) -> httpx.HTTPTransport:
    """httpx's transport with the deadline-aware network backend. Only an https base URL gets a real TLS context
    (the process's shared one); building a plain-http transport loads no CA bundle."""
    ssl_context = shared_tls_context() if base_url.startswith("https://") else _NO_TLS
    transport = httpx.HTTPTransport(verify=ssl_context)
    transport._pool.close()
    transport._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=_DeadlineBackend())
    return transport


# --- Parsing ------------------------------------------------------------------------------------------------
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """What PostgreSQL can store of a string: NUL characters and lone surrogates become U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return _SURROGATES.sub("\ufffd", value)


def _timestamp(value: Any, name: str, *, nullable: bool = False) -> datetime | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise BadResponse(f"{name} is not a timestamp")
    try:
        parsed = datetime.fromisoformat(value)
        # IsDown sends UTC with a Z; a naive value is read as UTC rather than as server-local time.
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadResponse(f"{name} is not an ISO 8601 timestamp: {clean_text(value[:40])!r}") from None


def _text(attributes: dict[str, Any], key: str, default: str = "") -> str:
    """A string attribute as sent (cleaned); a missing or null one is ``default``; another type is refused."""
    value = attributes.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadResponse(f"{key} is not a string")
    return clean_text(value)


def _clean_raw(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean_raw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_raw(v) for v in value]
    return value


def parse_incident(data: Any) -> RemoteIncident:
    """Parse the ``data`` object of IsDown's envelope. Raises BadResponse for anything that does not fit the
    documented types; unknown values of a documented type are kept as they are."""
    if not isinstance(data, dict):
        raise BadResponse("data is not an object")
    raw_id = data.get("id")
    # The docs promise a string id; an integer is tolerated and normalised, anything else is refused.
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or str(raw_id) == "" or len(str(raw_id)) > 64:
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
    raw_updates = attributes.get("updates") or []
    if not isinstance(raw_updates, list):
        raise BadResponse("updates is not a list")
    updates = []
    for index, item in enumerate(raw_updates):
        if not isinstance(item, dict):
            raise BadResponse(f"updates[{index}] is not an object")
        created_at = _timestamp(item.get("created_at"), f"updates[{index}].created_at")
        assert created_at is not None
        updates.append(
            RemoteUpdate(stage=_text(item, "status"), description=_text(item, "description"), created_at=created_at)
        )
    # "Ordered list", direction undocumented: sort ourselves. sorted() is stable, so ties keep server order.
    updates.sort(key=lambda update: update.created_at)
    created_at = _timestamp(attributes.get("created_at"), "created_at")
    assert created_at is not None
    url = attributes.get("url")
    return RemoteIncident(
        id=clean_text(str(raw_id)),
        title=_text(attributes, "title"),
        description=_text(attributes, "description"),
        severity=_text(attributes, "status"),
        resolved=resolved,
        created_at=created_at,
        updated_at=_timestamp(attributes.get("updated_at"), "updated_at", nullable=True),
        resolved_at=_timestamp(attributes.get("resolved_at"), "resolved_at", nullable=True),
        service_id=service_id,
        service_name=_text(attributes, "service"),
        url=clean_text(url) if isinstance(url, str) else None,
        updates=tuple(updates),
        raw=_clean_raw(data),
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
        return max(seconds, 0.0) if seconds == seconds and seconds != float("inf") else None
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
                value = first.get(key)
                if isinstance(value, str) and value:
                    return value
    return None


# --- The client ---------------------------------------------------------------------------------------------
class IsDownClient:
    """One IsDown account at one base URL. Keeps its connections alive between calls; not thread-safe (one per
    thread, or per worker process)."""

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
            # Each phase is bounded by the call's deadline too (see _DeadlineStream); these are the outer limits.
            timeout=httpx.Timeout(timeout),
            # A redirect can drop the body or hand the Authorization header to another host: never follow.
            follow_redirects=False,
            transport=transport or _transport(self.base_url),
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

    def deadline(self, seconds: float | None = None) -> contextlib.AbstractContextManager[None]:
        """Bound every call inside the block by one wall-clock deadline (``timeout`` seconds unless given). A
        deadline already in force (an outer block) is kept."""
        return deadline(self.timeout if seconds is None else seconds)

    def _exchange(self, method: str, path: str, content: bytes | None) -> tuple[httpx.Response, Exchange]:
        """Make one call; return the 2xx response, or raise the error class that says what is safe."""
        headers = {"Content-Type": "application/json"} if content is not None else {}
        started = time.monotonic()

        def elapsed() -> int:
            return round((time.monotonic() - started) * 1000)

        with self.deadline():
            current = _current_deadline.get()
            assert current is not None
            current.wrote = False
            if current.remaining() <= 0:  # spent before this call began (a slow claim, an earlier page)
                self._log(method, path, None, elapsed(), "deadline passed before sending")
                raise NotSent("the call's deadline passed before the request was sent", latency_ms=elapsed())
            try:
                response = self._http.request(method, path, content=content, headers=headers)
            except _DeadlinePassed:
                self._log(method, path, None, elapsed(), "deadline passed before sending")
                raise NotSent("the call's deadline passed before the request was sent", latency_ms=elapsed()) from None
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
                self._log(method, path, None, elapsed(), type(exc).__name__)
                raise NotSent(self._describe(exc), latency_ms=elapsed()) from None
            except httpx.TransportError as exc:
                # Read/write timeouts, a connection dropped after sending (RemoteProtocolError, ReadError,
                # WriteError) and anything unforeseen: the request may have been processed.
                self._log(method, path, None, elapsed(), type(exc).__name__)
                raise OutcomeUnknown(self._describe(exc), latency_ms=elapsed()) from None
        latency_ms = elapsed()
        excerpt = clean_text(self._scrub(response.text[:EXCERPT_LIMIT]))
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
        facts = _Facts(status_code=code, latency_ms=exchange.latency_ms, excerpt=exchange.excerpt)
        detail = _error_detail(response)
        detail = clean_text(self._scrub(detail)) if detail else None
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
    def _bad(detail: str, exchange: Exchange) -> BadResponse:
        return BadResponse(
            detail, status_code=exchange.status_code, latency_ms=exchange.latency_ms, excerpt=exchange.excerpt
        )

    def _payload(self, response: httpx.Response, exchange: Exchange) -> dict[str, Any]:
        try:
            payload = response.json()
        except (ValueError, UnicodeDecodeError):
            raise self._bad("response body is not JSON", exchange) from None
        if not isinstance(payload, dict) or "data" not in payload:
            raise self._bad("response is not IsDown's envelope", exchange)
        return payload

    def _incident(self, response: httpx.Response, exchange: Exchange) -> RemoteIncident:
        data = self._payload(response, exchange)["data"]
        try:
            return parse_incident(data)
        except BadResponse as error:
            raise self._bad(error.detail, exchange) from None

    def send(self, request: Request) -> Result:
        """Send one request whose 2xx answer is a single incident, its body exactly as given."""
        response, exchange = self._exchange(request.method, request.path, request.content)
        return Result(self._incident(response, exchange), exchange)

    def get_incident(self, remote_id: str) -> RemoteIncident:
        return self.send(Request("GET", incident_path(remote_id))).incident

    def list_incidents(
        self, service_id: int, *, since: datetime | None = None, max_pages: int = DEFAULT_MAX_PAGES
    ) -> Listing:
        """The service's incidents, following ``links.next`` [GUESS: IsDown's pagination is undocumented] to the
        end of the list, or until a newest-first list reaches back past ``since``. All pages share one deadline.

        A next link to another host or outside the API is never followed (the key would go with it): the
        listing is then incomplete, as it is after ``max_pages`` pages."""
        path: str | None = f"{INCIDENTS_PATH}?service_id={int(service_id)}"
        seen: list[RemoteIncident] = []
        # "Newest first" is believed only once seen: no item newer than the one before, and at least one older.
        newest_first, descending = True, False
        pages = 0
        with self.deadline():
            while path is not None:
                if pages >= max_pages:
                    return Listing(tuple(seen), False, f"stopped after {max_pages} pages", pages)
                response, exchange = self._exchange("GET", path, None)
                pages += 1
                payload = self._payload(response, exchange)
                data = payload["data"]
                if not isinstance(data, list):
                    raise self._bad("data is not a list", exchange)
                try:
                    page = [parse_incident(item) for item in data]
                except BadResponse as error:
                    raise self._bad(error.detail, exchange) from None
                for incident in page:
                    if seen and incident.created_at > seen[-1].created_at:
                        newest_first = False
                    if seen and incident.created_at < seen[-1].created_at:
                        descending = True
                    seen.append(incident)
                if since is not None and newest_first and descending and seen[-1].created_at < since:
                    return Listing(tuple(seen), True, "reached back past the first attempt", pages)
                links = payload.get("links")
                following = links.get("next") if isinstance(links, dict) else None
                if not following:
                    return Listing(tuple(seen), True, "read to the end", pages)
                path = self._relative(following)
                if path is None:
                    return Listing(tuple(seen), False, "the next page is not on IsDown's API", pages)
        return Listing(tuple(seen), True, "read to the end", pages)

    def _relative(self, link: Any) -> str | None:
        """A next link as a path to this API's list call, or None if it leads anywhere else."""
        if not isinstance(link, str):
            return None
        base, target = urlsplit(self.base_url), urlsplit(link)
        if (target.scheme or target.netloc) and (target.scheme, target.netloc) != (base.scheme, base.netloc):
            return None
        # The list call itself, spelled exactly: no dot segments, no look-alike path.
        if target.path != f"{base.path}{INCIDENTS_PATH}":
            return None
        return f"{INCIDENTS_PATH}?{target.query}" if target.query else INCIDENTS_PATH

    def delete_incident(self, remote_id: str) -> None:
        """Delete an incident. Already gone (404) counts as done; any 2xx body is accepted."""
        try:
            self._exchange("DELETE", incident_path(remote_id), None)
        except Rejected as error:
            if error.status_code != 404:
                raise
