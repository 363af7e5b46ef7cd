"""The outbox protocol: claim a Publication, send its approved request, classify the outcome, reconcile what
is unknown, record every HTTP call, finish in one transaction. The only code that moves a Publication.

Invariants (tested under faults in tests/publishing/):
- Every HTTP call runs outside any transaction, after a committed claim (``sending`` or ``reconciling`` with
  a lease), and is one PublishAttempt row, created before the call and completed after it.
- A request whose outcome is unknown is never sent again blindly: it is reconciled first. Found → adopt;
  proven absent → send again (an attempt); undecidable → ``needs_attention`` for a human.
- The request sent is the approved revision's, byte for byte; its SHA-256 is re-checked before each send.
- One task run makes at most one call; what comes next is a state plus ``next_attempt_at``, so a lost
  message or a dead worker costs time, never an effect (the sweeper re-enqueues what is due and idle).

States::

    queued ──claim──▶ sending ──2xx──▶ published
      ▲                 │ ├─NotSent/429/503+Retry-After──▶ retry_wait ──due, claim──▶ sending
      │                 │ ├─other 4xx, hash mismatch, attempts used up──▶ failed
      │                 │ └─timeout/5xx/bad body, lease expired (sweeper)──▶ reconciling
      │                 reconciling ──found──▶ published
      │                             ──proven absent──▶ retry_wait (or failed when attempts are used up)
      │                             ──ambiguous / check impossible──▶ needs_attention
    failed ──retry now──▶ queued          needs_attention ──retry now──▶ reconciling
    failed, needs_attention ──send again──▶ queued;  ──mark published #id (verified by GET)──▶ published
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import access, audit, isdown, sync, workflow  # workflow owns the canonical form of a request
from .models import (
    AttemptKind,
    Draft,
    DraftKind,
    DraftState,
    Incident,
    Publication,
    PublicationState,
    PublishAttempt,
    Revision,
)

logger = logging.getLogger(__name__)

S = PublicationState
# IsDown's clock and ours differ: an incident stamped a little before our attempt started may still be ours.
CLOCK_SKEW_MARGIN = timedelta(seconds=10)
# A reconcile call that fails for a reason that cannot last (not sent, rate limited) is tried this often.
RECONCILE_MAX_TRIES = 3
# Stored excerpts and errors are capped so a proxy's HTML page cannot bloat the table.
TEXT_LIMIT = 2000
CLAIMABLE_FOR_SEND = (S.QUEUED, S.RETRY_WAIT)
RETRYABLE_BY_HUMAN = (S.FAILED, S.NEEDS_ATTENTION)


# --- Errors -------------------------------------------------------------------------------------------------
class PublishingError(Exception):
    """Base of the errors a human action can raise; the message is fit to show to the user."""


class InvalidTransition(PublishingError):
    """The publication is no longer in a state that allows this action (someone or something moved it on)."""


class VerificationFailed(PublishingError):
    """``mark_published``: IsDown does not confirm that the given incident is this publication's effect."""


# --- Classification and backoff (pure) ------------------------------------------------------------------
class Outcome(StrEnum):
    PUBLISHED = "published"
    RETRY = "retry"  # certainly not processed: safe to send again later
    REJECTED = "rejected"  # permanent: sending again would fail again
    UNKNOWN = "unknown"  # may have been processed: reconcile first


def classify(error: BaseException | None) -> Outcome:
    """Map a call's outcome to what is safe next. Anything unforeseen counts as unknown, the safe side."""
    if error is None:
        return Outcome.PUBLISHED
    if isinstance(error, (isdown.NotSent, isdown.RateLimited)):
        return Outcome.RETRY
    if isinstance(error, isdown.Rejected):
        return Outcome.REJECTED
    return Outcome.UNKNOWN


def retry_delay(*, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds before the next send: full jitter over ``base * 2**(attempt-1)`` capped at PUBLISH_BACKOFF_CAP,
    and never earlier than a server's ``Retry-After``."""
    ceiling = min(settings.PUBLISH_BACKOFF_CAP, settings.PUBLISH_BACKOFF_BASE * 2 ** max(attempt - 1, 0))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def countdown_for(delay: float) -> float:
    """A broker countdown stays below the visibility timeout; a longer wait is finished by the sweeper."""
    return max(0.0, min(delay, settings.PUBLISH_BACKOFF_CAP))


def request_intact(revision: Revision) -> bool:
    """The revision's stored hash equals a recomputation over the method, path and body it would send."""
    return workflow.request_sha256(revision.method, revision.path, revision.body) == revision.sha256


def make_client() -> isdown.IsDownClient:
    return isdown.IsDownClient(settings.ISDOWN_API_URL, settings.ISDOWN_EFFECTIVE_API_KEY, settings.ISDOWN_TIMEOUT)


# --- One pass of the protocol -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """What one ``process`` pass left behind: the state, and when a task should run again (None: no need)."""

    state: str
    run_again_in: float | None = None


@dataclass(frozen=True)
class _Claim:
    publication_id: int
    attempt_id: int
    kind: str  # AttemptKind.SEND or AttemptKind.RECONCILE
    method: str
    path: str
    body: dict[str, Any]
    draft_kind: str
    service_id: int
    remote_incident_id: str | None
    window_start: datetime | None  # reconcile: the earliest send of this publication, less the skew margin
    task_id: str
    context: dict[str, Any] = field(default_factory=dict)


def process(*, publication_id: int, task_id: str = "", client: isdown.IsDownClient | None = None) -> Step:
    """Claim the publication if it is due and free, make its one HTTP call, record the outcome.

    Safe to call any number of times for the same id, concurrently: a row that is locked, not due, leased
    or final is left alone (``Step`` with ``run_again_in=None``).
    """
    claim_or_step = _claim(publication_id=publication_id, task_id=task_id)
    if isinstance(claim_or_step, Step):
        return claim_or_step
    claim = claim_or_step
    own_client = client is None
    client = client or make_client()
    try:
        if claim.kind == AttemptKind.SEND:
            return _send(claim, client)
        return _reconcile(claim, client)
    finally:
        if own_client:
            client.close()


def _context(task_id: str) -> dict[str, Any]:
    return {"task_id": task_id} if task_id else {}


def _next_attempt_number(publication: Publication) -> int:
    last = publication.attempt_rows.order_by("-number").values_list("number", flat=True).first()
    return (last or 0) + 1


def _window_start(publication: Publication) -> datetime | None:
    first = (
        publication.attempt_rows.filter(kind=AttemptKind.SEND).order_by("number").values_list("started_at", flat=True)
    ).first()
    return first - CLOCK_SKEW_MARGIN if first else None


def _lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.PUBLISH_LEASE_SECONDS)


def _claim(*, publication_id: int, task_id: str) -> _Claim | Step:
    """Lock the row (skipping it if another worker holds it), check it is due, move it and commit."""
    now = timezone.now()
    with transaction.atomic():
        publication = (
            Publication.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("revision", "draft", "draft__service", "incident", "team")
            .filter(pk=publication_id)
            .first()
        )
        if publication is None:
            return Step(state="locked_or_gone")
        if publication.next_attempt_at and publication.next_attempt_at > now:
            return Step(state=publication.state)  # early message: its own or the sweeper's will come
        if publication.state in CLAIMABLE_FOR_SEND:
            return _claim_send(publication, now=now, task_id=task_id)
        if publication.state == S.RECONCILING and (
            publication.lease_expires_at is None or publication.lease_expires_at <= now
        ):
            return _claim_reconcile(publication, now=now, task_id=task_id)
        return Step(state=publication.state)


def _claim_send(publication: Publication, *, now: datetime, task_id: str) -> _Claim | Step:
    revision = publication.revision
    if not request_intact(revision):
        reason = "Refused: the request no longer matches the approved revision's SHA-256."
        _fail(publication, reason=reason, action="publication.refused", now=now, task_id=task_id)
        return Step(state=publication.state)
    publication.attempts += 1
    publication.state = S.SENDING
    publication.sending_started_at = now
    publication.lease_expires_at = _lease_until(now)
    publication.next_attempt_at = None
    publication.save(
        update_fields=["attempts", "state", "sending_started_at", "lease_expires_at", "next_attempt_at", "updated_at"]
    )
    attempt = PublishAttempt.objects.create(
        publication=publication,
        number=_next_attempt_number(publication),
        kind=AttemptKind.SEND,
        started_at=now,
        method=revision.method,
        path=revision.path,
        request_body=revision.body,
    )
    workflow.follow_publication(draft_id=publication.draft_id, state=DraftState.PUBLISHING)
    audit.record(
        "publication.sending",
        summary=f"Sending attempt {publication.attempts} of {publication}: {revision.method} {revision.path}",
        actor_label=audit.SYSTEM_WORKER,
        team=publication.team,
        target=publication,
        context={**_context(task_id), "attempt": attempt.number, "sha256": revision.sha256},
    )
    return _claim_for(publication, attempt, task_id=task_id)


def _claim_reconcile(publication: Publication, *, now: datetime, task_id: str) -> _Claim:
    draft = publication.draft
    if draft.kind == DraftKind.OPEN:
        method, path = "GET", f"{isdown.INCIDENTS_PATH}?service_id={draft.service.isdown_service_id}"
    else:
        method, path = "GET", isdown.incident_path(publication.incident.remote_id)
    publication.lease_expires_at = _lease_until(now)
    publication.next_attempt_at = None
    publication.save(update_fields=["lease_expires_at", "next_attempt_at", "updated_at"])
    attempt = PublishAttempt.objects.create(
        publication=publication,
        number=_next_attempt_number(publication),
        kind=AttemptKind.RECONCILE,
        started_at=now,
        method=method,
        path=path,
    )
    return _claim_for(publication, attempt, task_id=task_id)


def _claim_for(publication: Publication, attempt: PublishAttempt, *, task_id: str) -> _Claim:
    draft = publication.draft
    incident = publication.incident or draft.incident
    return _Claim(
        publication_id=publication.pk,
        attempt_id=attempt.pk,
        kind=attempt.kind,
        method=publication.revision.method,
        path=publication.revision.path,
        body=publication.revision.body,
        draft_kind=draft.kind,
        service_id=draft.service.isdown_service_id,
        remote_incident_id=incident.remote_id if incident is not None else None,
        window_start=_window_start(publication),
        task_id=task_id,
    )


# --- Send ---------------------------------------------------------------------------------------------------
def _send(claim: _Claim, client: isdown.IsDownClient) -> Step:
    error: BaseException | None = None
    result: isdown.Result | None = None
    try:
        result = client.send(claim.method, claim.path, claim.body)
    except isdown.IsDownError as exc:
        error = exc
    except Exception as exc:
        logger.exception("publication %s: unexpected error while sending", claim.publication_id)
        error = exc
    return _record_send(claim, result=result, error=error)


def _lock(publication_id: int) -> Publication:
    return (
        Publication.objects.select_for_update(of=("self",))
        .select_related("revision", "draft", "team", "incident")
        .get(pk=publication_id)
    )


def _complete_attempt(
    attempt: PublishAttempt,
    *,
    now: datetime,
    outcome: str,
    exchange: isdown.Exchange | None,
    error: BaseException | None,
    latency_ms: int | None = None,
) -> None:
    attempt.finished_at = now
    attempt.outcome = outcome
    if exchange is not None:
        attempt.status_code = exchange.status_code
        attempt.latency_ms = exchange.latency_ms
        attempt.response_excerpt = exchange.excerpt[:TEXT_LIMIT]
    else:
        attempt.latency_ms = latency_ms if latency_ms is not None else getattr(error, "latency_ms", None)
    if error is not None:
        attempt.error = _describe(error)
    attempt.save()


def _describe(error: BaseException) -> str:
    if isinstance(error, isdown.IsDownError):
        return str(error)[:TEXT_LIMIT]
    return f"{type(error).__name__}: {error}"[:TEXT_LIMIT]


def _record_send(claim: _Claim, *, result: isdown.Result | None, error: BaseException | None) -> Step:
    """Record the call and move the publication, in one transaction, if this claim still owns it."""
    outcome = classify(error)
    now = timezone.now()
    with transaction.atomic():
        publication = _lock(claim.publication_id)
        attempt = PublishAttempt.objects.select_for_update().get(pk=claim.attempt_id)
        exchange = result.exchange if result is not None else getattr(error, "exchange", None)
        _complete_attempt(attempt, now=now, outcome=outcome.value, exchange=exchange, error=error)
        still_ours = publication.state == S.SENDING and _latest_attempt_id(publication, AttemptKind.SEND) == attempt.pk
        if not still_ours:
            # The lease ran out while we waited and the sweeper moved the row on. A success is still the
            # truth and is adopted; anything else is only recorded, the new owner decides.
            if result is not None and publication.state not in (S.PUBLISHED,):
                _publish(publication, remote=result.incident, now=now, task_id=claim.task_id, how="late answer")
            else:
                logger.warning("publication %s: attempt %s finished after losing its lease", publication.pk, attempt.pk)
            return Step(state=publication.state)
        if result is not None:
            _publish(publication, remote=result.incident, now=now, task_id=claim.task_id, how="sent")
            return Step(state=publication.state)
        if outcome == Outcome.REJECTED:
            detail = getattr(error, "detail", None) or str(error)
            _fail(
                publication,
                reason=f"IsDown refused the request: {detail}",
                action="publication.failed",
                now=now,
                task_id=claim.task_id,
            )
            return Step(state=publication.state)
        if outcome == Outcome.RETRY:
            retry_after = getattr(error, "retry_after", None)
            step = _schedule_retry(
                publication,
                attempt=attempt,
                reason=_describe(error),
                retry_after=retry_after,
                now=now,
                task_id=claim.task_id,
            )
            return step
        return _start_reconciling(publication, reason=_describe(error), now=now, task_id=claim.task_id)


def _latest_attempt_id(publication: Publication, kind: str) -> int | None:
    return publication.attempt_rows.filter(kind=kind).order_by("-number").values_list("pk", flat=True).first()


def _schedule_retry(
    publication: Publication,
    *,
    attempt: PublishAttempt | None,
    reason: str,
    retry_after: float | None,
    now: datetime,
    task_id: str,
) -> Step:
    if publication.attempts >= settings.PUBLISH_MAX_ATTEMPTS:
        _fail(
            publication,
            reason=f"Gave up after {publication.attempts} attempts. Last: {reason}",
            action="publication.failed",
            now=now,
            task_id=task_id,
        )
        return Step(state=publication.state)
    delay = retry_delay(attempt=publication.attempts, retry_after=retry_after)
    publication.state = S.RETRY_WAIT
    publication.next_attempt_at = now + timedelta(seconds=delay)
    publication.lease_expires_at = None
    publication.last_error = reason[:TEXT_LIMIT]
    publication.save(update_fields=["state", "next_attempt_at", "lease_expires_at", "last_error", "updated_at"])
    if attempt is not None:
        attempt.next_retry_at = publication.next_attempt_at
        attempt.save(update_fields=["next_retry_at"])
    audit.record(
        "publication.retry_scheduled",
        summary=f"{publication}: attempt {publication.attempts} not processed ({reason[:200]}); "
        f"next attempt in {delay:.1f} s",
        actor_label=audit.SYSTEM_WORKER,
        team=publication.team,
        target=publication,
        context={**_context(task_id), "retry_after": retry_after, "delay": round(delay, 3)},
    )
    return Step(state=publication.state, run_again_in=countdown_for(delay))


def _start_reconciling(publication: Publication, *, reason: str, now: datetime, task_id: str) -> Step:
    delay = settings.PUBLISH_RECONCILE_DELAY
    publication.state = S.RECONCILING
    publication.next_attempt_at = now + timedelta(seconds=delay)
    publication.lease_expires_at = None
    publication.last_error = reason[:TEXT_LIMIT]
    publication.save(update_fields=["state", "next_attempt_at", "lease_expires_at", "last_error", "updated_at"])
    audit.record(
        "publication.reconciling",
        summary=f"{publication}: outcome of attempt {publication.attempts} unknown ({reason[:200]}); "
        "checking IsDown before anything is sent again",
        actor_label=audit.SYSTEM_WORKER,
        team=publication.team,
        target=publication,
        context=_context(task_id),
    )
    return Step(state=publication.state, run_again_in=countdown_for(delay))


def _fail(publication: Publication, *, reason: str, action: str, now: datetime, task_id: str) -> None:
    publication.state = S.FAILED
    publication.last_error = reason[:TEXT_LIMIT]
    publication.lease_expires_at = None
    publication.next_attempt_at = None
    publication.save(update_fields=["state", "last_error", "lease_expires_at", "next_attempt_at", "updated_at"])
    workflow.follow_publication(draft_id=publication.draft_id, state=DraftState.FAILED)
    audit.record(
        action,
        summary=f"{publication} failed: {reason[:300]}",
        actor_label=audit.SYSTEM_WORKER,
        team=publication.team,
        target=publication,
        context=_context(task_id),
    )


def _needs_attention(publication: Publication, *, reason: str, task_id: str) -> None:
    publication.state = S.NEEDS_ATTENTION
    publication.last_error = reason[:TEXT_LIMIT]
    publication.lease_expires_at = None
    publication.next_attempt_at = None
    publication.save(update_fields=["state", "last_error", "lease_expires_at", "next_attempt_at", "updated_at"])
    audit.record(
        "publication.needs_attention",
        summary=f"{publication} needs attention: {reason[:300]}",
        actor_label=audit.SYSTEM_WORKER,
        team=publication.team,
        target=publication,
        context=_context(task_id),
    )


def _publish(
    publication: Publication,
    *,
    remote: isdown.RemoteIncident,
    now: datetime,
    task_id: str,
    how: str,
    actor: Any = None,
) -> Incident:
    """Store the remote incident, link it, and mark publication and draft published (caller's transaction)."""
    draft = Draft.objects.select_for_update().select_related("service").get(pk=publication.draft_id)
    if draft.kind == DraftKind.OPEN:
        incident = Incident.objects.select_for_update().filter(remote_id=remote.id).first()
        if incident is None:
            incident = Incident(service=draft.service, remote_id=remote.id, title=remote.title)
    else:
        incident = Incident.objects.select_for_update().get(pk=publication.incident_id or draft.incident_id)
    sync.apply_remote(incident=incident, remote=remote, now=now)
    publication.state = S.PUBLISHED
    publication.incident = incident
    publication.remote_id = remote.id
    publication.published_at = now
    publication.lease_expires_at = None
    publication.next_attempt_at = None
    publication.result = {
        "id": remote.id,
        "url": remote.url,
        "title": remote.title,
        "severity": remote.severity,
        "stage": remote.stage,
        "resolved": remote.resolved,
        "updates": len(remote.updates),
        "how": how,
    }
    publication.save()
    workflow.follow_publication(draft_id=draft.pk, state=DraftState.PUBLISHED)
    audit.record(
        "publication.published",
        summary=f"{publication} published as IsDown incident #{remote.id} ({how})",
        actor=actor,
        actor_label=None if actor is not None else audit.SYSTEM_WORKER,
        team=publication.team,
        target=publication,
        changes={"state": [None, S.PUBLISHED.value], "remote_id": [None, remote.id]},
        context=_context(task_id),
    )
    return incident


# --- Reconcile ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """The result of comparing IsDown's state with the request whose outcome is unknown."""

    found: isdown.RemoteIncident | None = None
    absent: bool = False
    reason: str = ""


def judge_create(
    *, candidates: list[isdown.RemoteIncident], body: dict[str, Any], window_start: datetime, known_ids: set[str]
) -> Verdict:
    """A create landed iff exactly one incident of the service has the title and was created in the window
    (and is not already some local incident). None → absent; more than one → undecidable."""
    matches = [
        remote
        for remote in candidates
        if remote.title == body.get("title") and remote.created_at >= window_start and remote.id not in known_ids
    ]
    if len(matches) == 1:
        return Verdict(found=matches[0], reason=f"found incident #{matches[0].id}")
    if not matches:
        return Verdict(absent=True, reason="no incident with this title since the first attempt")
    ids = ", ".join(f"#{remote.id}" for remote in matches)
    return Verdict(reason=f"{len(matches)} incidents with this title since the first attempt: {ids}")


def judge_update(*, remote: isdown.RemoteIncident, body: dict[str, Any], window_start: datetime) -> Verdict:
    """An update landed iff exactly one update with its stage and description is newer than the window; a
    PATCH without an update (title/severity only) is idempotent, so matching attributes count as found."""
    if "description" in body or "resolution_stage" in body:
        matches = [
            update
            for update in remote.updates
            if update.stage == body.get("resolution_stage")
            and update.description == body.get("description")
            and update.created_at >= window_start
        ]
        if len(matches) == 1:
            return Verdict(found=remote, reason=f"found the update of {matches[0].created_at.isoformat()}")
        if not matches:
            return Verdict(absent=True, reason="no such update since the first attempt")
        return Verdict(reason=f"{len(matches)} identical updates since the first attempt")
    same = ("title" not in body or remote.title == body["title"]) and (
        "status" not in body or remote.severity == body["status"]
    )
    if same:
        return Verdict(found=remote, reason="title and severity already as requested")
    return Verdict(absent=True, reason="title or severity not as requested")


def _reconcile(claim: _Claim, client: isdown.IsDownClient) -> Step:
    window_start = claim.window_start or timezone.now() - CLOCK_SKEW_MARGIN
    verdict: Verdict | None = None
    error: BaseException | None = None
    exchange: isdown.Exchange | None = None
    try:
        if claim.draft_kind == DraftKind.OPEN:
            candidates = client.list_incidents(claim.service_id)
            known = set(
                Incident.objects.filter(remote_id__in=[c.id for c in candidates]).values_list("remote_id", flat=True)
            )
            verdict = judge_create(candidates=candidates, body=claim.body, window_start=window_start, known_ids=known)
        else:
            remote = client.get_incident(claim.remote_incident_id or "")
            verdict = judge_update(remote=remote, body=claim.body, window_start=window_start)
    except isdown.IsDownError as exc:
        error, exchange = exc, exc.exchange
    except Exception as exc:
        logger.exception("publication %s: unexpected error while reconciling", claim.publication_id)
        error = exc
    return _record_reconcile(claim, verdict=verdict, error=error, exchange=exchange)


def _record_reconcile(
    claim: _Claim, *, verdict: Verdict | None, error: BaseException | None, exchange: isdown.Exchange | None
) -> Step:
    now = timezone.now()
    with transaction.atomic():
        publication = _lock(claim.publication_id)
        attempt = PublishAttempt.objects.select_for_update().get(pk=claim.attempt_id)
        if verdict is not None:
            outcome = "found" if verdict.found else "absent" if verdict.absent else "ambiguous"
        else:
            outcome = "check_failed"
        _complete_attempt(attempt, now=now, outcome=outcome, exchange=exchange, error=error)
        if verdict is not None and not attempt.error:
            attempt.error = verdict.reason[:TEXT_LIMIT]
            attempt.save(update_fields=["error"])
        still_ours = (
            publication.state == S.RECONCILING and _latest_attempt_id(publication, AttemptKind.RECONCILE) == attempt.pk
        )
        if not still_ours:
            return Step(state=publication.state)
        if verdict is None:
            return _reconcile_failed(publication, error=error, now=now, task_id=claim.task_id)
        if verdict.found is not None:
            _publish(publication, remote=verdict.found, now=now, task_id=claim.task_id, how="adopted after reconcile")
            return Step(state=publication.state)
        if verdict.absent:
            audit.record(
                "publication.reconciled",
                summary=f"{publication}: not on IsDown ({verdict.reason}); it will be sent again",
                actor_label=audit.SYSTEM_WORKER,
                team=publication.team,
                target=publication,
                context=_context(claim.task_id),
            )
            return _schedule_retry(
                publication,
                attempt=attempt,
                reason=f"Proven absent: {verdict.reason}",
                retry_after=None,
                now=now,
                task_id=claim.task_id,
            )
        _needs_attention(
            publication, reason=f"Cannot tell whether it was published: {verdict.reason}", task_id=claim.task_id
        )
        return Step(state=publication.state)


def _reconcile_failed(publication: Publication, *, error: BaseException | None, now: datetime, task_id: str) -> Step:
    """A check that could not be made: try again a few times when the failure cannot last, then ask a human."""
    reason = _describe(error) if error is not None else "unknown error"
    tries = _consecutive_failed_checks(publication)
    if classify(error) == Outcome.RETRY and tries < RECONCILE_MAX_TRIES:
        delay = retry_delay(attempt=tries, retry_after=getattr(error, "retry_after", None))
        publication.next_attempt_at = now + timedelta(seconds=delay)
        publication.lease_expires_at = None
        publication.last_error = f"Check failed, will try again: {reason}"[:TEXT_LIMIT]
        publication.save(update_fields=["next_attempt_at", "lease_expires_at", "last_error", "updated_at"])
        return Step(state=publication.state, run_again_in=countdown_for(delay))
    _needs_attention(publication, reason=f"Could not check IsDown: {reason}", task_id=task_id)
    return Step(state=publication.state)


def _consecutive_failed_checks(publication: Publication) -> int:
    count = 0
    for kind, outcome in publication.attempt_rows.order_by("-number").values_list("kind", "outcome"):
        if kind != AttemptKind.RECONCILE or outcome != "check_failed":
            break
        count += 1
    return count


# --- Sweeper ------------------------------------------------------------------------------------------------
def sweep(*, task_id: str = "") -> list[int]:
    """Move expired ``sending`` leases to ``reconciling`` and return the ids of due publications that are not
    moving (never enqueued, or enqueued longer ago than SWEEP_INTERVAL), for the caller to enqueue.

    Nothing here sends anything; enqueuing a row twice is harmless because ``process`` claims it once.
    """
    now = timezone.now()
    idle = now - timedelta(seconds=settings.SWEEP_INTERVAL)
    with transaction.atomic():
        expired = list(
            Publication.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("team")
            .filter(state=S.SENDING, lease_expires_at__lt=now)
        )
        for publication in expired:
            PublishAttempt.objects.filter(publication=publication, finished_at__isnull=True).update(
                finished_at=now, outcome="lost", error="The worker stopped during the call (lease expired)."
            )
            publication.state = S.RECONCILING
            publication.next_attempt_at = now
            publication.lease_expires_at = None
            publication.last_error = "The worker stopped during the call; checking IsDown before sending again."
            publication.save(update_fields=["state", "next_attempt_at", "lease_expires_at", "last_error", "updated_at"])
            audit.record(
                "publication.lease_expired",
                summary=f"{publication}: the worker's lease expired mid-call; reconciling",
                actor_label=audit.SYSTEM_WORKER,
                team=publication.team,
                target=publication,
                context=_context(task_id),
            )
    due = (
        Publication.objects.filter(state__in=(S.QUEUED, S.RETRY_WAIT, S.RECONCILING))
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .filter(Q(last_enqueued_at__isnull=True) | Q(last_enqueued_at__lte=idle))
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
        .order_by("next_attempt_at", "pk")
    )
    return [publication.pk for publication in expired] + [
        pk for pk in due.values_list("pk", flat=True) if pk not in {p.pk for p in expired}
    ]


def note_enqueued(*, publication_id: int) -> None:
    """Remember that a message for this publication reached the broker (the sweeper leaves it alone a while)."""
    Publication.objects.filter(pk=publication_id).update(last_enqueued_at=timezone.now())


# --- Human actions ------------------------------------------------------------------------------------------
def _lock_for_human(publication_id: int, *, allowed: tuple[str, ...], expected_state: str | None) -> Publication:
    publication = _lock(publication_id)
    if publication.state not in allowed or (expected_state is not None and publication.state != expected_state):
        raise InvalidTransition(
            f"This publication is now “{publication.get_state_display()}”; the action was not applied."
        )
    return publication


def _enqueue_after_commit(publication_id: int) -> None:
    from .tasks import enqueue_publication  # tasks imports this module

    transaction.on_commit(lambda: enqueue_publication(publication_id))


def _requeue_by_human(
    publication_id: int,
    *,
    user: Any,
    expected_state: str | None,
    verb: str,
    to_state: Any,
    action: str,
    summary: str,
    context: dict[str, Any] | None = None,
) -> Publication:
    """One approver action on a failed or stuck publication: lock, check, move, audit, enqueue after commit.
    ``to_state`` is the new state, or a function of the current one."""
    with transaction.atomic():
        publication = _lock_for_human(publication_id, allowed=RETRYABLE_BY_HUMAN, expected_state=expected_state)
        access.require_role(user, publication.team, access.REVIEWING_ROLES, action=verb)
        before = publication.state
        publication.state = to_state(before) if callable(to_state) else to_state
        if publication.state == S.QUEUED:
            publication.attempts = 0  # a fresh attempt budget for a new send
        publication.next_attempt_at = None
        publication.lease_expires_at = None
        publication.save(update_fields=["state", "attempts", "next_attempt_at", "lease_expires_at", "updated_at"])
        workflow.follow_publication(draft_id=publication.draft_id, state=DraftState.PUBLISHING)
        audit.record(
            action,
            summary=summary.format(publication=publication, before=before, user=user.get_username()),
            actor=user,
            team=publication.team,
            target=publication,
            changes={"state": [before, publication.state]},
            context=context(publication) if callable(context) else context,
        )
        _enqueue_after_commit(publication.pk)
    return publication


def retry_now(*, publication_id: int, user: Any, expected_state: str | None = None) -> Publication:
    """Approver: a failed publication is queued again with a fresh attempt budget; one that needs attention
    is checked again (reconcile), which sends nothing by itself."""
    return _requeue_by_human(
        publication_id,
        user=user,
        expected_state=expected_state,
        verb="retry a publication",
        to_state=lambda before: S.QUEUED if before == S.FAILED else S.RECONCILING,
        action="publication.retry_requested",
        summary="{publication}: retry now (from {before})",
    )


def send_again(*, publication_id: int, user: Any, expected_state: str | None = None) -> Publication:
    """Approver, after seeing the evidence: send the approved request again even though an earlier attempt
    may have landed. The only path to a send that reconciliation did not clear."""
    return _requeue_by_human(
        publication_id,
        user=user,
        expected_state=expected_state,
        verb="send a publication again",
        to_state=S.QUEUED,
        action="publication.send_again",
        summary="{publication}: send again, confirmed by {user}",
        context=lambda publication: {"last_error": publication.last_error[:300]},
    )


def mark_published(
    *,
    publication_id: int,
    user: Any,
    remote_id: str,
    expected_state: str | None = None,
    client: isdown.IsDownClient | None = None,
) -> Publication:
    """Approver: adopt IsDown incident ``remote_id`` as this publication's effect, after a GET shows it is an
    incident of the right service (and, for an update, the right incident). The GET is a recorded attempt."""
    remote_id = remote_id.strip().lstrip("#")
    if not remote_id.isdigit():
        raise VerificationFailed("An IsDown incident id is a number, like 55001.")
    with transaction.atomic():
        publication = _lock_for_human(publication_id, allowed=RETRYABLE_BY_HUMAN, expected_state=expected_state)
        access.require_role(user, publication.team, access.REVIEWING_ROLES, action="mark a publication published")
        seen_state = publication.state
        attempt = PublishAttempt.objects.create(
            publication=publication,
            number=_next_attempt_number(publication),
            kind=AttemptKind.VERIFY,
            started_at=timezone.now(),
            method="GET",
            path=isdown.incident_path(remote_id),
        )
        draft = Draft.objects.select_related("service", "incident").get(pk=publication.draft_id)
    own_client = client is None
    client = client or make_client()
    remote: isdown.RemoteIncident | None = None
    error: BaseException | None = None
    try:
        remote = client.get_incident(remote_id)
    except isdown.IsDownError as exc:
        error = exc
    finally:
        if own_client:
            client.close()
    problem = _verification_problem(draft=draft, remote=remote, error=error, remote_id=remote_id)
    now = timezone.now()
    with transaction.atomic():
        attempt = PublishAttempt.objects.select_for_update().get(pk=attempt.pk)
        _complete_attempt(
            attempt,
            now=now,
            outcome="verified" if problem is None else "not_verified",
            exchange=error.exchange if isinstance(error, isdown.IsDownError) else None,
            error=error,
        )
        if problem is not None:
            attempt.error = attempt.error or problem
            attempt.save(update_fields=["error"])
    if problem is not None:
        raise VerificationFailed(problem)
    with transaction.atomic():
        publication = _lock_for_human(publication_id, allowed=(seen_state,), expected_state=None)
        _publish(
            publication,
            remote=remote,
            now=now,
            task_id="",
            how=f"marked published by {user.get_username()}",
            actor=user,
        )
        audit.record(
            "publication.marked_published",
            summary=f"{publication}: marked published as IsDown incident #{remote.id} by {user.get_username()}",
            actor=user,
            team=publication.team,
            target=publication,
            changes={"state": [seen_state, S.PUBLISHED.value]},
            context={"remote_id": remote.id},
        )
    return publication


def _verification_problem(
    *, draft: Draft, remote: isdown.RemoteIncident | None, error: BaseException | None, remote_id: str
) -> str | None:
    if error is not None:
        if isinstance(error, isdown.Rejected) and error.status_code == 404:
            return f"IsDown has no incident #{remote_id}."
        return f"Could not check incident #{remote_id} on IsDown: {_describe(error)}"
    assert remote is not None
    if remote.service_id != draft.service.isdown_service_id:
        return f"Incident #{remote_id} belongs to another IsDown service (#{remote.service_id})."
    if draft.kind == DraftKind.UPDATE:
        expected = draft.incident.remote_id if draft.incident is not None else None
        if expected != remote.id:
            return f"This update was for incident #{expected}, not #{remote_id}."
        return None
    other = Incident.objects.filter(remote_id=remote.id).first()
    if other is not None:
        return f"Incident #{remote_id} is already linked to {other}."
    return None
