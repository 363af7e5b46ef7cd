"""The outbox protocol: every approved request reaches IsDown once, as approved, in the order approved, or a
human is told. The only code that moves a Publication.

States (``TRANSITIONS`` is the whole table; ``_move`` is the one writer of a publication's state, attempt token,
lease, next attempt and last error, and records the audit event of every move)::

    scheduled ──due (its time came: the sweeper)──▶ queued
    scheduled ──cancel (an approver, until it is sent)──▶ abandoned
    queued ──claim──▶ sending ──2xx──▶ published ──(after a resend) watch: a late twin──▶ duplicate_detected
      ▲                 │ ├─not sent / 429 / 503+Retry-After──▶ retry_wait ──due, claim──▶ sending
      │                 │ ├─other 4xx, refused hash, attempts used up──▶ failed
      │                 │ └─timeout / 5xx / bad body; lease expired (sweeper)──▶ reconciling
      │                 reconciling ──found (one exact match)──▶ published
      │                             ──absent at every look of the window──▶ retry_wait (a resend)
      │                             ──ambiguous, or checks failing past their patience──▶ needs_attention
    failed (IsDown refused it: a 4xx) ──edit and resubmit──▶ superseded (its draft is edited,
        resubmitted and reviewed again as a new revision)
    failed (attempts used up, hash refused) ──retry──▶ queued
    needs_attention ──check again──▶ reconciling, ──send again──▶ queued
    failed, needs_attention ──mark published (verified by GET)──▶ published, ──abandon (reason)──▶ abandoned
    duplicate_detected ──delete the extra incident on IsDown / acknowledge──▶ published
    queued, retry_wait, failed, needs_attention, abandoned ──an earlier send's effect turns up (a late 2xx, or
        sync finds it: ``attribute``)──▶ published

Invariants (tested under real faults in tests/publishing/):
- **Order.** Publications for one IsDown incident go out one at a time, in the order they are due (``due_at``:
  the approval, or the later time it was scheduled for), then approval order (id order; approvals of one incident
  are serialised on its row). A change approved later but due earlier goes first. A publication waits while one
  ahead of it for the same incident is scheduled, queued, in flight, or failed/needs attention: those hold the
  queue until a human retries or abandons them. A partial unique index allows one holding publication per incident.
- **Fenced sends.** The claim is the fence: the call's wall-clock deadline (DNS included) starts before the
  claim's transaction, which commits ``sending`` with a fresh attempt token and a lease longer than that
  deadline (ISDOWN_TIMEOUT < the lease, checked at start-up), right before the call. Only the sweeper can take
  a ``sending`` row over, and only once its lease has expired, by which time the deadline has passed, and a
  request whose deadline passed is never started (isdown.py). So no send leaves after its lease, and a success
  that lands on a row already moved on is either adopted (the row was still undecided) or a detected duplicate.
- **On a budget.** One publication costs the worker two transactions (the claim, the record), each one locking
  the row once with a narrow select that carries what the claim checks (the integrity hashes, the attempt
  number, the publication ahead), and writing only what changed.
- **Nothing resent on a guess.** An unknown outcome is reconciled: IsDown is looked at, matching everything
  that was approved (matching.py), at each point of PUBLISH_RECONCILE_WINDOWS after the doubt began. Found →
  adopt. Absent at every look → send again. A look that fails for a reason that does not last (5xx, 429,
  timeout) is retried with backoff; only checks failing longer than PUBLISH_CHECK_PATIENCE, or an answer only
  a human can judge, go to needs_attention.
- **A late twin is watched for.** After a resend, IsDown is looked at again over PUBLISH_WATCH_WINDOWS; a twin
  makes the publication ``duplicate_detected``.
- **The approved bytes.** The request sent is the revision's stored text, byte for byte; its SHA-256, the
  revision's and the approval's are re-checked at every claim.
- **Humans are told.** Entering failed, needs_attention or duplicate_detected queues an email to the team's
  approvers and the draft's author (notifications.py, a durable outbox) in the same transaction.
- **Every HTTP call** runs outside any transaction and is one PublishAttempt row, created with the claim and
  completed after the call. One task run makes at most one call (a listing may read several pages); what
  comes next is a state plus ``next_attempt_at``, so a lost message or a dead worker costs time, never an
  effect: the sweeper re-enqueues what is due and idle, and moves expired leases on.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.postgres.expressions import ArraySubquery
from django.db import transaction
from django.db.models import CharField, Exists, OuterRef, Q, Subquery, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone

from . import access, audit, enqueue, isdown, matching, mirror, notifications, workflow
from .models import (
    HOLDING_PUBLICATION_STATES,
    HUMAN_PUBLICATION_STATES,
    PUBLISHING_DECISIONS,
    AttemptKind,
    AttemptOutcome,
    Incident,
    Publication,
    PublicationState,
    PublishAttempt,
    RevisionRequest,
)

logger = logging.getLogger(__name__)

S = PublicationState
O = AttemptOutcome  # noqa: E741 - the table below reads better with a short name
# Stored excerpts and errors are capped so a proxy's HTML page cannot bloat the table.
TEXT_LIMIT = 2000
CLAIMABLE_FOR_SEND = (S.QUEUED, S.RETRY_WAIT)
# Publications that hold the ones behind them: not yet settled. A scheduled one holds only those due after it.
UNSETTLED = (S.QUEUED, S.SCHEDULED, *HOLDING_PUBLICATION_STATES)
# Waiting for its time or for its turn (issue 12 §7): it is queued only when a worker is about to claim it, so
# an approver may cancel it until it is sent.
CANCELLABLE = (S.SCHEDULED,)
RETRYABLE_BY_HUMAN = (S.FAILED, S.NEEDS_ATTENTION)

# Every legal move, with the audit action it records (a caller may name a more precise one).
TRANSITIONS: dict[tuple[str, str], str] = {
    (S.QUEUED, S.SENDING): "publication.sending",
    (S.RETRY_WAIT, S.SENDING): "publication.sending",
    (S.QUEUED, S.FAILED): "publication.refused",
    (S.RETRY_WAIT, S.FAILED): "publication.refused",
    (S.SENDING, S.PUBLISHED): "publication.published",
    (S.SENDING, S.RETRY_WAIT): "publication.retry_scheduled",
    (S.SENDING, S.FAILED): "publication.failed",
    (S.SENDING, S.RECONCILING): "publication.reconciling",
    (S.RECONCILING, S.PUBLISHED): "publication.published",
    (S.RECONCILING, S.RETRY_WAIT): "publication.proven_absent",
    (S.RECONCILING, S.FAILED): "publication.failed",
    (S.RECONCILING, S.NEEDS_ATTENTION): "publication.needs_attention",
    # An earlier attempt's effect turned up (a late answer, or sync found it): the publication is done.
    (S.QUEUED, S.PUBLISHED): "publication.published",
    (S.RETRY_WAIT, S.PUBLISHED): "publication.published",
    (S.FAILED, S.PUBLISHED): "publication.published",
    (S.NEEDS_ATTENTION, S.PUBLISHED): "publication.published",
    (S.ABANDONED, S.PUBLISHED): "publication.published",
    (S.PUBLISHED, S.DUPLICATE_DETECTED): "publication.duplicate_detected",
    # Human decisions.
    (S.FAILED, S.QUEUED): "publication.retry_requested",
    (S.NEEDS_ATTENTION, S.QUEUED): "publication.send_again",
    (S.NEEDS_ATTENTION, S.RECONCILING): "publication.check_requested",
    (S.FAILED, S.ABANDONED): "publication.abandoned",
    (S.NEEDS_ATTENTION, S.ABANDONED): "publication.abandoned",
    (S.DUPLICATE_DETECTED, S.PUBLISHED): "publication.duplicate_resolved",
    (S.FAILED, S.SUPERSEDED): "publication.superseded",
    # Scheduled publication (issue 12 §7): due, it is queued like any other; an approver may cancel it until sent.
    (S.SCHEDULED, S.QUEUED): "publication.due",
    (S.SCHEDULED, S.ABANDONED): "publication.cancelled",
}
# States whose schedule (lease, next attempt, token) may change without a move: a claim for a check or a
# watch, the fence renewing a lease, the next look being scheduled. The attempt rows record these.
SCHEDULE_STATES = (S.SENDING, S.RECONCILING, S.PUBLISHED)
# Fields besides the five above that a move may also set (bookkeeping of the protocol).
MOVE_FIELDS = frozenset(
    {
        "attempts",
        "first_sent_at",
        "unknown_since",
        "checks_failing_since",
        "watch_until",
        "remote_id",
        "incident",
        "result",
        "published_at",
        "duplicate_remote_ids",
        "decision_note",
    }
)
_KEEP: Any = object()
# A look (a check or a watch) that was recorded gives its claim back.
_RELEASED: dict[str, Any] = {"lease_expires_at": None, "attempt_token": None}


# --- Errors -------------------------------------------------------------------------------------------------
class PublishingError(Exception):
    """Base of the errors a human action can raise; the message is fit to show to the user."""


class InvalidTransition(PublishingError):
    """The publication is no longer in a state that allows this action (someone or something moved it on)."""


class VerificationFailed(PublishingError):
    """``mark_published``: IsDown does not confirm that the given incident is this publication's effect."""


class IllegalMove(AssertionError):
    """A programming error: a move that is not in TRANSITIONS."""


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
    if isinstance(error, isdown.NotSent | isdown.RateLimited):
        return Outcome.RETRY
    if isinstance(error, isdown.Rejected):
        return Outcome.REJECTED
    return Outcome.UNKNOWN


def retry_delay(*, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds before the next try: full jitter over ``base * 2**(attempt-1)`` capped at PUBLISH_BACKOFF_CAP,
    and never earlier than a server's ``Retry-After``."""
    ceiling = min(settings.PUBLISH_BACKOFF_CAP, settings.PUBLISH_BACKOFF_BASE * 2 ** max(attempt - 1, 0))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def countdown_for(delay: float) -> float:
    """A broker countdown stays below the visibility timeout; a longer wait is finished by the sweeper."""
    return max(0.0, min(delay, settings.PUBLISH_BACKOFF_CAP))


def make_client() -> isdown.IsDownClient:
    return isdown.IsDownClient(settings.ISDOWN_API_URL, settings.ISDOWN_EFFECTIVE_API_KEY, settings.ISDOWN_TIMEOUT)


def approved_request(publication: Publication) -> isdown.Request:
    return isdown.Request(publication.request.method, publication.request.path, publication.request.body)


def integrity_problem(publication: Publication) -> str | None:
    """Why the stored request may not be sent, or None: its bytes must hash to its SHA-256, the revision's
    requests to the revision's hash, and that hash must be the one an approver approved."""
    revision = publication.revision
    if approved_request(publication).sha256 != publication.request.sha256:
        return "the request no longer matches its SHA-256"
    lines = getattr(publication, "request_hash_lines", None)  # carried by the claim's select (_lock_to_claim)
    if lines is not None:
        hashes = [(int(position), sha) for position, sha in (line.split(" ", 1) for line in lines)]
    else:
        hashes = [(request.position, request.sha256) for request in revision.requests.all()]
    if isdown.requests_sha256(hashes) != revision.sha256:
        return "the revision's requests no longer match the revision's SHA-256"
    review = getattr(revision, "review", None)
    # An approval, or a break-glass decision (an approver's own, after a fresh TOTP check): both bind the hash.
    if review is None or review.decision not in PUBLISHING_DECISIONS or review.sha256 != revision.sha256:
        return "no approval covers this revision's SHA-256"
    return None


# --- The one writer -------------------------------------------------------------------------------------------
def _move(
    publication: Publication,
    to: str,
    *,
    summary: str = "",
    action: str | None = None,
    actor: User | None = None,
    task_id: str = "",
    last_error: Any = _KEEP,
    next_attempt_at: Any = _KEEP,
    lease_expires_at: Any = _KEEP,
    attempt_token: Any = _KEEP,
    changes: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    **fields: Any,
) -> None:
    """Move ``publication`` (locked by the caller) to ``to``, in the caller's transaction.

    A move between states must be in TRANSITIONS; it resets the lease, token and schedule unless given, records
    its audit event, lets the draft follow, tells the humans when a human must act, and hands the queue to the
    next publication of the same incident once this one no longer holds it. A move within a state only
    reschedules (SCHEDULE_STATES) and is audited only when ``action`` is given."""
    before = publication.state
    changing = before != to
    if changing and (before, to) not in TRANSITIONS:
        raise IllegalMove(f"publication {publication.pk}: {before} → {to} is not a legal move")
    if not changing and to not in SCHEDULE_STATES:
        raise IllegalMove(f"publication {publication.pk}: no schedule to change in {to}")
    unknown = set(fields) - MOVE_FIELDS
    if unknown:
        raise IllegalMove(f"publication fields {sorted(unknown)} are not the protocol's to set")
    default = None if changing else _KEEP
    written = ["state", "updated_at", *fields]
    for name, value in (
        ("next_attempt_at", next_attempt_at),
        ("lease_expires_at", lease_expires_at),
        ("attempt_token", attempt_token),
    ):
        value = default if value is _KEEP else value
        if value is not _KEEP:
            setattr(publication, name, value)
            written.append(name)
    if last_error is not _KEEP:
        publication.last_error = str(last_error)[:TEXT_LIMIT]
        written.append("last_error")
    elif changing:
        publication.last_error = ""
        written.append("last_error")
    for name, value in fields.items():
        setattr(publication, name, value)
    publication.state = to
    # Only what this move wrote.
    publication.save(update_fields=written)
    if changing:
        # Every row lock this move needs is taken before the audit log's lock (held to commit), never after.
        workflow.follow_publications(draft_id=publication.draft_id)
    if changing or action:
        audit.record(
            action or TRANSITIONS[(before, to)],
            summary=summary or f"{publication}: {before} → {to}",
            actor=actor,
            actor_label=None if actor is not None else audit.SYSTEM_WORKER,
            team=publication.team,
            target=publication,
            changes={**({"state": [before, to]} if changing else {}), **(changes or {})},
            context={**({"task_id": task_id} if task_id else {}), **(context or {})},
        )
    if not changing:
        return
    if to in HUMAN_PUBLICATION_STATES:
        # A failed or needs-attention one holds the changes due after it; a detected duplicate holds nothing.
        held = len(behind(publication)) if to in HOLDING_PUBLICATION_STATES else 0
        notifications.publication_needs_human(publication, reason=publication.last_error or summary, waiting=held)
    if before in UNSETTLED and to not in UNSETTLED and publication.target_remote_id:
        following = next_in_line(publication.target_remote_id)
        if following is not None:
            enqueue.publication_on_commit(following)


# The order publications of one IsDown incident go out in: when each is due (its approval, or the time it was
# scheduled for), then approval (id). A change approved later but due earlier goes first.
ORDER = ("due_at", "pk")


def due_before(due_at: Any, pk: Any) -> Q:
    """Publications ahead of one due at ``due_at`` with id ``pk`` in ORDER (values or OuterRef expressions)."""
    return Q(due_at__lt=due_at) | Q(due_at=due_at, pk__lt=pk)


def due_after(due_at: Any, pk: Any) -> Q:
    """Publications behind one due at ``due_at`` with id ``pk`` in ORDER."""
    return Q(due_at__gt=due_at) | Q(due_at=due_at, pk__gt=pk)


def behind(publication: Publication) -> list[int]:
    """The unsettled publications of the same IsDown incident that go out after this one, in ORDER: those it holds
    while it waits for a human (a scheduled one among them, once its time comes)."""
    if not publication.target_remote_id:
        return []
    return list(
        Publication.objects.filter(target_remote_id=publication.target_remote_id, state__in=UNSETTLED)
        .filter(due_after(publication.due_at, publication.pk))
        .order_by(*ORDER)
        .values_list("pk", flat=True)
    )


def next_in_line(target_remote_id: str) -> int | None:
    """The first unsettled publication for this IsDown incident, in ORDER."""
    return (
        Publication.objects.filter(target_remote_id=target_remote_id, state__in=UNSETTLED)
        .order_by(*ORDER)
        .values_list("pk", flat=True)
        .first()
    )


def ahead_of(publication: Publication) -> Publication | None:
    """The first publication ahead of this one in ORDER for the same IsDown incident that is not settled."""
    if not publication.target_remote_id:
        return None
    return (
        Publication.objects.filter(target_remote_id=publication.target_remote_id, state__in=UNSETTLED)
        .filter(due_before(publication.due_at, publication.pk))
        .order_by(*ORDER)
        .first()
    )


def incident_queue(target_remote_id: str) -> list[Publication]:
    """The unsettled publications of one IsDown incident, in the order they will go out (the review page)."""
    if not target_remote_id:
        return []
    return list(
        Publication.objects.filter(target_remote_id=target_remote_id, state__in=UNSETTLED)
        .select_related("draft")
        .order_by(*ORDER)
    )


# --- One pass of the protocol -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """What one ``process`` pass left behind: the state, when a task should run again (None: no need), and the
    publication this one waits for, if any."""

    state: str
    run_again_in: float | None = None
    waiting_for: int | None = None


@dataclass(frozen=True)
class _Claim:
    publication_id: int
    attempt_id: int
    token: uuid.UUID
    kind: str
    request: isdown.Request
    creates: bool
    service_id: int  # IsDown's
    target_remote_id: str  # the incident an update addresses; for a watch after a create, the one created
    since: datetime  # the first send's start: what counts as possibly ours on IsDown
    claimed_ids: frozenset[str]  # IsDown ids other publications or incidents already own (for looks at a create)
    task_id: str
    first_attempt: bool = False  # the publication's first attempt of any kind: no earlier send can have landed


def process(*, publication_id: int, task_id: str = "", client: isdown.IsDownClient | None = None) -> Step:
    """Claim the publication if it is due and free, make its one call (a send, a check, or a watch), record.

    Safe to call any number of times for the same id, concurrently: a row that is locked, not due, leased,
    waiting its turn or final is left alone."""
    # The claim is the fence: the call's deadline starts before the claim writes the lease that covers the call.
    with isdown.deadline(settings.ISDOWN_TIMEOUT):
        claim = _claim(publication_id=publication_id, task_id=task_id)
        if isinstance(claim, Step):
            return claim
        own_client = client is None
        client = client or make_client()
        try:
            if claim.kind == AttemptKind.SEND:
                return _send(claim, client)
            if claim.kind == AttemptKind.RECONCILE:
                return _check(claim, client)
            return _watch(claim, client)
        finally:
            if own_client:
                client.close()


def _lock(publication_id: int, *, skip_locked: bool = False) -> Publication | None:
    return (
        Publication.objects.select_for_update(skip_locked=skip_locked, of=("self",), no_key=True)
        .select_related("request", "revision", "revision__review", "draft", "team", "service", "incident")
        .filter(pk=publication_id)
        .first()
    )


# What a worker reads of a publication and its relations: no JSON result, no draft or incident rows.
_WORKER_FIELDS = (
    *(
        f.attname
        for f in Publication._meta.concrete_fields
        if f.attname not in {"result", "duplicate_remote_ids", "decision_note", "created_at", "last_enqueued_at"}
    ),
    "request__method",
    "request__path",
    "request__body",
    "request__sha256",
    "revision__sha256",
    "revision__review__decision",
    "revision__review__sha256",
    "team__name",
    "service__isdown_service_id",
    "draft__group_id",  # a create joins its draft's group (issue 12): read with the row, not after
)


def _lock_for_worker(publication_id: int) -> Publication | None:
    """The row a worker records on, locked (waiting for a claim or a human that holds it), narrow."""
    return (
        Publication.objects.select_for_update(of=("self",), no_key=True)
        .select_related("request", "revision", "revision__review", "team", "service", "draft")
        .only(*_WORKER_FIELDS)
        .filter(pk=publication_id)
        .first()
    )


def _lock_to_claim(publication_id: int) -> Publication | None:
    """The row a claim decides on, locked unless someone holds it, with what the claim checks in the same
    statement: the revision's request hashes, the last attempt's number and the publication ahead of it."""
    ahead = (
        Publication.objects.filter(target_remote_id=OuterRef("target_remote_id"), state__in=UNSETTLED)
        .filter(due_before(OuterRef("due_at"), OuterRef("pk")))
        .exclude(target_remote_id="")
        .order_by(*ORDER)
        .values("pk")[:1]
    )
    return (
        Publication.objects.select_for_update(skip_locked=True, of=("self",), no_key=True)
        .select_related("request", "revision", "revision__review", "team", "service", "draft")
        .only(*_WORKER_FIELDS)
        .annotate(
            request_hash_lines=ArraySubquery(
                RevisionRequest.objects.filter(revision_id=OuterRef("revision_id"))
                .order_by("position")
                .values(line=Concat(Cast("position", CharField()), Value(" "), "sha256", output_field=CharField()))
            ),
            last_attempt_number=Subquery(
                PublishAttempt.objects.filter(publication_id=OuterRef("pk")).order_by("-number").values("number")[:1]
            ),
            ahead_id=Subquery(ahead),
        )
        .filter(pk=publication_id)
        .first()
    )


def _next_attempt_number(publication: Publication) -> int:
    if hasattr(publication, "last_attempt_number"):  # carried by the claim's select
        return (publication.last_attempt_number or 0) + 1
    last = publication.attempt_rows.order_by("-number").values_list("number", flat=True).first()
    return (last or 0) + 1


def _lease(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.PUBLISH_LEASE_SECONDS)


def _claimed_ids(publication: Publication) -> frozenset[str]:
    """IsDown incidents that belong to something else: other publications' results and known incidents."""
    others = Publication.objects.exclude(pk=publication.pk).exclude(remote_id="").values_list("remote_id", flat=True)
    known = Incident.objects.filter(service=publication.service, remote_id__isnull=False).exclude(
        publications=publication
    )
    return frozenset(others) | {remote_id for remote_id in known.values_list("remote_id", flat=True) if remote_id}


def _claim(*, publication_id: int, task_id: str) -> _Claim | Step:
    """Lock the row (skipping it if another worker holds it), decide what is due, record the claim, commit."""
    now = timezone.now()
    with transaction.atomic():
        publication = _lock_to_claim(publication_id)
        if publication is None:
            return Step(state="locked_or_gone")
        if publication.next_attempt_at and publication.next_attempt_at > now:
            return Step(state=publication.state)  # early message: its own or the sweeper's will come
        if publication.lease_expires_at and publication.lease_expires_at > now:
            return Step(state=publication.state)  # someone is on it
        if publication.state == S.SCHEDULED:
            # Due (the early return above saw to that). It stays scheduled (cancellable) while a change due before
            # it is unsettled; on its turn it is queued and claimed in this same transaction.
            ahead = ahead_of(publication)
            if ahead is not None:
                return Step(state=publication.state, waiting_for=ahead.pk)
            _move(
                publication,
                S.QUEUED,
                summary=f"{publication}: due, scheduled for {publication.due_at.isoformat()}",
                task_id=task_id,
            )
        if publication.state in CLAIMABLE_FOR_SEND:
            ahead_id: int | None = getattr(publication, "ahead_id", None)  # carried by the claim's select
            if ahead_id is not None:
                return Step(state=publication.state, waiting_for=ahead_id)
            problem = integrity_problem(publication)
            if problem is not None:
                _move(
                    publication,
                    S.FAILED,
                    summary=f"{publication} refused: {problem}",
                    task_id=task_id,
                    last_error=f"Refused: {problem}. Nothing was sent.",
                )
                return Step(state=publication.state)
            return _claim_send(publication, now=now, task_id=task_id)
        if publication.state == S.RECONCILING:
            return _claim_look(publication, AttemptKind.RECONCILE, now=now, task_id=task_id)
        if publication.state == S.PUBLISHED and publication.watch_until is not None and publication.next_attempt_at:
            return _claim_look(publication, AttemptKind.WATCH, now=now, task_id=task_id)
        return Step(state=publication.state)


def _claim_send(publication: Publication, *, now: datetime, task_id: str) -> _Claim:
    token = uuid.uuid4()
    request = approved_request(publication)
    attempt = PublishAttempt.objects.create(
        publication=publication,
        number=_next_attempt_number(publication),
        kind=AttemptKind.SEND,
        token=token,
        started_at=now,
        method=request.method,
        path=request.path,
        request_sha256=request.sha256,
    )
    _move(
        publication,
        S.SENDING,
        summary=f"Sending attempt {publication.attempts + 1} of {publication}: {request.method} {request.path}",
        task_id=task_id,
        lease_expires_at=_lease(now),
        attempt_token=token,
        attempts=publication.attempts + 1,
        first_sent_at=publication.first_sent_at or now,
        context={"attempt": attempt.number, "sha256": request.sha256},
    )
    return _claim_for(publication, attempt, token=token, task_id=task_id)


def _claim_look(publication: Publication, kind: str, *, now: datetime, task_id: str) -> _Claim:
    token = uuid.uuid4()
    if publication.request.method == "POST":
        method, path = "GET", f"{isdown.INCIDENTS_PATH}?service_id={publication.service.isdown_service_id}"
    else:
        method, path = "GET", isdown.incident_path(publication.target_remote_id or publication.remote_id)
    attempt = PublishAttempt.objects.create(
        publication=publication,
        number=_next_attempt_number(publication),
        kind=kind,
        token=token,
        started_at=now,
        method=method,
        path=path,
    )
    _move(publication, publication.state, lease_expires_at=_lease(now), attempt_token=token, next_attempt_at=None)
    return _claim_for(publication, attempt, token=token, task_id=task_id)


def _claim_for(publication: Publication, attempt: PublishAttempt, *, token: uuid.UUID, task_id: str) -> _Claim:
    request = approved_request(publication)
    return _Claim(
        publication_id=publication.pk,
        attempt_id=attempt.pk,
        token=token,
        kind=attempt.kind,
        request=request,
        creates=request.method == "POST",
        service_id=publication.service.isdown_service_id,
        target_remote_id=publication.target_remote_id or publication.remote_id,
        since=publication.first_sent_at or attempt.started_at,
        # Only a look at a create judges which incidents are someone else's; a send needs none of it.
        claimed_ids=_claimed_ids(publication)
        if attempt.kind != AttemptKind.SEND and request.method == "POST"
        else frozenset(),
        task_id=task_id,
        first_attempt=attempt.number == 1,
    )


def _complete(
    attempt: PublishAttempt,
    *,
    outcome: str,
    error: BaseException | None = None,
    exchange: isdown.Exchange | None = None,
    note: str = "",
    now: datetime | None = None,
) -> None:
    attempt.finished_at = now or timezone.now()
    attempt.outcome = outcome
    fields = ["finished_at", "outcome", "error"]
    exchange = exchange or (error.exchange if isinstance(error, isdown.IsDownError) else None)
    if exchange is not None:
        attempt.status_code = exchange.status_code
        attempt.latency_ms = exchange.latency_ms
        attempt.response_excerpt = exchange.excerpt[:TEXT_LIMIT]
        fields += ["status_code", "latency_ms", "response_excerpt"]
    elif isinstance(error, isdown.IsDownError):
        attempt.latency_ms = error.latency_ms
        fields.append("latency_ms")
    attempt.error = (describe(error) if error is not None else note)[:TEXT_LIMIT]
    attempt.save(update_fields=fields)


def describe(error: BaseException) -> str:
    if isinstance(error, isdown.IsDownError):
        return str(error)[:TEXT_LIMIT]
    return f"{type(error).__name__}: {error}"[:TEXT_LIMIT]


def _locked_claim(claim: _Claim) -> tuple[Publication, PublishAttempt, bool]:
    """Lock the row; say whether the claim still owns it. The attempt is written by id, unread: only the row's
    holder writes its attempts (the sweeper too locks the row first)."""
    publication = _lock_for_worker(claim.publication_id)
    assert publication is not None  # publications are never deleted (PROTECT everywhere)
    attempt = PublishAttempt(pk=claim.attempt_id, publication_id=claim.publication_id)
    return publication, attempt, publication.attempt_token == claim.token


# --- Send ---------------------------------------------------------------------------------------------------
def _send(claim: _Claim, client: isdown.IsDownClient) -> Step:
    """Make the claimed call (fenced by the claim: see the module docstring) and record it."""
    result: isdown.Result | None = None
    error: BaseException | None = None
    try:
        result = client.send(claim.request)
    except isdown.IsDownError as exc:
        error = exc
    except Exception as exc:  # a bug or a time limit mid-call: whatever happened, the outcome is unknown
        logger.exception("publication %s: unexpected error while sending", claim.publication_id)
        error = exc
    return _record_send(claim, result=result, error=error)


def _record_send(claim: _Claim, *, result: isdown.Result | None, error: BaseException | None) -> Step:
    """Record the call and move the publication, in one transaction."""
    outcome = classify(error)
    now = timezone.now()
    with transaction.atomic():
        publication, attempt, ours = _locked_claim(claim)
        attempt_outcome = {
            Outcome.PUBLISHED: O.PUBLISHED,
            Outcome.REJECTED: O.REJECTED,
            Outcome.UNKNOWN: O.UNKNOWN,
            Outcome.RETRY: O.NOT_SENT if isinstance(error, isdown.NotSent) else O.RETRY,
        }[outcome]
        if not (ours and publication.state == S.SENDING):
            # The lease ran out and the sweeper moved the row on. A failure is only recorded (the new owner
            # decides); a success is the truth and is adopted, or is a duplicate.
            _complete(attempt, outcome=O.LATE if result is not None else attempt_outcome, error=error, now=now)
            if result is not None:
                _late_success(publication, remote=result.incident, task_id=claim.task_id, now=now)
            return Step(state=publication.state)
        _complete(attempt, outcome=attempt_outcome, error=error, exchange=result.exchange if result else None, now=now)
        if result is not None:
            _publish(
                publication,
                remote=result.incident,
                now=now,
                task_id=claim.task_id,
                how="sent",
                only_send=claim.first_attempt,
            )
            return Step(state=publication.state, run_again_in=_watch_countdown(publication, now))
        if outcome == Outcome.REJECTED:
            detail = getattr(error, "detail", None) or str(error)
            _move(
                publication,
                S.FAILED,
                summary=f"{publication} failed: IsDown refused it ({str(detail)[:200]})",
                task_id=claim.task_id,
                last_error=f"IsDown refused the request: {detail}",
            )
            return Step(state=publication.state)
        if outcome == Outcome.RETRY:
            return _retry_or_fail(
                publication,
                attempt=attempt,
                reason=describe(error) if error else "not sent",
                retry_after=getattr(error, "retry_after", None),
                now=now,
                task_id=claim.task_id,
            )
        first_look = now + timedelta(seconds=settings.PUBLISH_RECONCILE_WINDOWS[0])
        reason = describe(error) if error else "unknown outcome"
        _move(
            publication,
            S.RECONCILING,
            summary=f"{publication}: outcome of attempt {publication.attempts} unknown ({reason[:200]}); "
            "checking IsDown before anything is sent again",
            task_id=claim.task_id,
            last_error=f"Outcome unknown ({reason}); checking IsDown before sending again.",
            next_attempt_at=first_look,
            unknown_since=now,
            checks_failing_since=None,
        )
        return Step(state=publication.state, run_again_in=countdown_for((first_look - now).total_seconds()))


def _retry_or_fail(
    publication: Publication,
    *,
    attempt: PublishAttempt | None,
    reason: str,
    retry_after: float | None,
    now: datetime,
    task_id: str,
) -> Step:
    if publication.attempts >= settings.PUBLISH_MAX_ATTEMPTS:
        _move(
            publication,
            S.FAILED,
            summary=f"{publication} failed after {publication.attempts} attempts: {reason[:200]}",
            task_id=task_id,
            last_error=f"Gave up after {publication.attempts} attempts. Last: {reason}",
        )
        return Step(state=publication.state)
    delay = retry_delay(attempt=publication.attempts, retry_after=retry_after)
    when = now + timedelta(seconds=delay)
    if attempt is not None:
        attempt.next_retry_at = when
        attempt.save(update_fields=["next_retry_at"])
    _move(
        publication,
        S.RETRY_WAIT,
        summary=f"{publication}: attempt {publication.attempts} not processed ({reason[:200]}); "
        f"next attempt in {delay:.1f} s",
        task_id=task_id,
        last_error=reason,
        next_attempt_at=when,
        context={"retry_after": retry_after, "delay": round(delay, 3)},
    )
    return Step(state=publication.state, run_again_in=countdown_for(delay))


def _all_copies_are_ours(publication: Publication, *, copies: int) -> bool:
    """Several exact copies of our words are all this publication's when it sent at least that many requests
    that may have landed, and no other publication ever sent the same words."""
    if _maybe_landed_sends(publication) < copies:
        return False
    same_words = Publication.objects.filter(
        request__body=publication.request.body,
        target_remote_id=publication.target_remote_id,
        first_sent_at__isnull=False,
    )
    return not same_words.exclude(pk=publication.pk).exists()


def _maybe_landed_sends(publication: Publication) -> int:
    return publication.attempt_rows.filter(
        kind=AttemptKind.SEND, outcome__in=[O.PUBLISHED, O.UNKNOWN, O.LOST, O.LATE]
    ).count()


def _publish(
    publication: Publication,
    *,
    remote: isdown.RemoteIncident,
    now: datetime,
    task_id: str,
    how: str,
    actor: User | None = None,
    action: str | None = None,
    only_send: bool = False,
) -> Incident:
    """Store what IsDown holds, link it, and move the publication to ``published`` (caller's transaction). When
    more than one send may have landed, a late twin is watched for (``only_send``: this was its first attempt of
    any kind, so no other send can have landed)."""
    grouped: dict[str, Any] = {}
    if publication.request.method == "POST":
        incident = Incident.objects.select_for_update(no_key=True).filter(remote_id=remote.id).first()
        if incident is None:
            incident = Incident(service=publication.service, remote_id=remote.id, title=remote.title)
        if incident.group_id is None and publication.draft.group_id is not None:
            # One IsDown incident per service, grouped under the draft's one local incident (issue 12).
            incident.group_id = publication.draft.group_id
            grouped = {"group": [None, incident.group_id]}
    else:
        incident_id = publication.incident_id or publication.draft.incident_id
        assert incident_id is not None, "an update's draft targets an incident (draft_kind_matches_incident)"
        incident = Incident.objects.select_for_update(no_key=True).get(pk=incident_id)
    mirror.apply_remote(incident=incident, remote=remote, now=now)
    watch: dict[str, Any] = {"watch_until": None, "next_attempt_at": None}
    effect = matching.Effect.of(approved_request(publication))
    # Two sends that may both have landed: the other one can still turn up. (A title or severity change
    # cannot be duplicated.)
    if (effect.creates or effect.posts_an_entry) and not only_send and _maybe_landed_sends(publication) >= 2:
        windows = settings.PUBLISH_WATCH_WINDOWS
        watch = {
            "watch_until": now + timedelta(seconds=windows[-1]),
            "next_attempt_at": now + timedelta(seconds=windows[0]),
        }
    _move(
        publication,
        S.PUBLISHED,
        action=action,
        summary=f"{publication} published as IsDown incident #{remote.id} ({how})",
        actor=actor,
        task_id=task_id,
        incident=incident,
        remote_id=remote.id,
        published_at=now,
        result={
            "id": remote.id,
            "url": remote.url,
            "title": remote.title[:300],
            "severity": remote.severity[:40],
            "stage": remote.stage[:40],
            "resolved": remote.resolved,
            "updates": len(remote.updates),
            "how": how,
        },
        changes={"remote_id": [None, remote.id], **grouped},
        **watch,
    )
    return incident


def _watch_countdown(publication: Publication, now: datetime) -> float | None:
    if publication.watch_until is None or publication.next_attempt_at is None:
        return None
    return countdown_for((publication.next_attempt_at - now).total_seconds())


def _late_success(publication: Publication, *, remote: isdown.RemoteIncident, task_id: str, now: datetime) -> None:
    """A send answered 2xx after its claim was gone. If the row is still undecided, that answer settles it;
    if it is already published (or its duplicate known) with another effect, this one is a duplicate."""
    if publication.state in (S.PUBLISHED, S.DUPLICATE_DETECTED):
        request = approved_request(publication)
        if request.method == "POST":
            twin = [remote.id] if remote.id != publication.remote_id else []
        else:
            effect = matching.Effect.of(request)
            extra = matching.extra_entries(remote=remote, effect=effect, since=publication.first_sent_at or now)
            twin = [remote.id] if extra else []
        if twin:
            _duplicate(publication, twin_ids=twin, task_id=task_id, how="a send answered after losing its lease")
        return
    # Still undecided (or a newer send is in flight: if that one lands too, its answer finds this row published
    # and records the twin).
    _publish(publication, remote=remote, now=now, task_id=task_id, how="a send answered after losing its lease")


def _duplicate(publication: Publication, *, twin_ids: list[str], task_id: str, how: str) -> None:
    ids = sorted({*publication.duplicate_remote_ids, *twin_ids})
    extra = ", ".join(f"#{i}" for i in ids if i != publication.remote_id)
    reason = f"It reached IsDown more than once ({how}): " + (
        f"incident(s) {extra} duplicate #{publication.remote_id}."
        if publication.request.method == "POST"
        else f"the update appears more than once on incident #{publication.remote_id}."
    )
    if publication.state == S.DUPLICATE_DETECTED:  # one more twin of a duplicate already known
        publication.duplicate_remote_ids = ids
        publication.save(update_fields=["duplicate_remote_ids", "updated_at"])
        return
    _move(
        publication,
        S.DUPLICATE_DETECTED,
        summary=f"{publication}: duplicate detected ({how})",
        task_id=task_id,
        last_error=reason,
        duplicate_remote_ids=ids,
        watch_until=None,
        changes={"duplicates": [None, ids]},
    )


# --- Checks on IsDown: reconcile and the twin watch -----------------------------------------------------------
def _look(claim: _Claim, client: isdown.IsDownClient) -> tuple[Any, BaseException | None]:
    """Read what IsDown shows for this claim: the service's list (a create) or the incident (an update)."""
    try:
        if claim.creates:
            return client.list_incidents(claim.service_id, since=claim.since - matching.CLOCK_SKEW), None
        return client.get_incident(claim.target_remote_id), None
    except isdown.IsDownError as exc:
        return None, exc
    except Exception as exc:  # unforeseen: a failed check, retried like any other
        logger.exception("publication %s: unexpected error while checking IsDown", claim.publication_id)
        return None, exc


def _check(claim: _Claim, client: isdown.IsDownClient) -> Step:
    seen, error = _look(claim, client)
    verdict: matching.Verdict | None = None
    if seen is not None:
        effect = matching.Effect.of(claim.request)
        if claim.creates:
            verdict = matching.judge_create(listing=seen, effect=effect, since=claim.since, claimed=claim.claimed_ids)
        else:
            verdict = matching.judge_update(remote=seen, effect=effect, since=claim.since)
    now = timezone.now()
    with transaction.atomic():
        publication, attempt, ours = _locked_claim(claim)
        if verdict is None:
            outcome = O.CHECK_FAILED
        else:
            outcome = O.FOUND if verdict.found else O.ABSENT if verdict.absent else O.AMBIGUOUS
        _complete(attempt, outcome=outcome, error=error, note=verdict.reason if verdict else "")
        if not (ours and publication.state == S.RECONCILING):
            return Step(state=publication.state)
        if verdict is None:
            return _check_failed(publication, error=error, now=now, task_id=claim.task_id)
        if verdict.found is not None:
            _publish(
                publication,
                remote=verdict.found,
                now=now,
                task_id=claim.task_id,
                how=f"found on IsDown: {verdict.reason}",
            )
            return Step(state=publication.state, run_again_in=_watch_countdown(publication, now))
        if verdict.copies and _all_copies_are_ours(publication, copies=len(verdict.copies)):
            # Several of its own sends landed: it is published, and duplicated.
            own, *extra = verdict.copies
            _publish(publication, remote=own, now=now, task_id=claim.task_id, how=f"found on IsDown: {verdict.reason}")
            twins = [remote.id for remote in extra] if claim.creates else [own.id]
            _duplicate(publication, twin_ids=twins, task_id=claim.task_id, how="more than one of its sends landed")
            return Step(state=publication.state)
        if verdict.ambiguous:
            _move(
                publication,
                S.NEEDS_ATTENTION,
                summary=f"{publication} needs attention: {verdict.reason}",
                task_id=claim.task_id,
                last_error=f"Cannot tell whether it reached IsDown: {verdict.reason}",
            )
            return Step(state=publication.state)
        return _absent(publication, verdict=verdict, now=now, task_id=claim.task_id)


def _absent(publication: Publication, *, verdict: matching.Verdict, now: datetime, task_id: str) -> Step:
    """One more look found nothing. Before the window is over, look again at its next point; after the last
    point, absence is proven and the approved request is sent again."""
    windows = settings.PUBLISH_RECONCILE_WINDOWS
    since = publication.unknown_since or now
    looks = publication.attempt_rows.filter(kind=AttemptKind.RECONCILE, outcome=O.ABSENT, started_at__gte=since).count()
    if looks < len(windows):
        when = max(now, since + timedelta(seconds=windows[looks]))
        _move(
            publication,
            S.RECONCILING,
            **_RELEASED,
            next_attempt_at=when,
            checks_failing_since=None,
            last_error=f"Not on IsDown yet (look {looks} of {len(windows)}); looking again before sending again.",
        )
        return Step(state=publication.state, run_again_in=countdown_for((when - now).total_seconds()))
    if publication.attempts >= settings.PUBLISH_MAX_ATTEMPTS:
        _move(
            publication,
            S.FAILED,
            summary=f"{publication} failed: not on IsDown after {publication.attempts} attempts",
            task_id=task_id,
            last_error=f"Gave up after {publication.attempts} attempts; none reached IsDown ({verdict.reason}).",
        )
        return Step(state=publication.state)
    _move(
        publication,
        S.RETRY_WAIT,
        summary=f"{publication}: not on IsDown after {len(windows)} looks over "
        f"{windows[-1]:g} s ({verdict.reason}); it will be sent again",
        task_id=task_id,
        last_error=f"Proven absent: {verdict.reason}",
        next_attempt_at=now,
    )
    return Step(state=publication.state, run_again_in=0.0)


def _check_failed(publication: Publication, *, error: BaseException | None, now: datetime, task_id: str) -> Step:
    """A look that could not be made: a blip is retried with backoff; a refusal only a human can judge (a 4xx:
    the key, the incident gone) or checks failing past PUBLISH_CHECK_PATIENCE go to needs_attention."""
    reason = describe(error) if error is not None else "unknown error"
    failing_since = publication.checks_failing_since or now
    lasting = classify(error) == Outcome.REJECTED
    patience_left = (now - failing_since).total_seconds() < settings.PUBLISH_CHECK_PATIENCE
    if lasting or not patience_left:
        why = "IsDown refused the check" if lasting else f"checks have failed since {failing_since:%H:%M:%S}"
        _move(
            publication,
            S.NEEDS_ATTENTION,
            summary=f"{publication} needs attention: {why} ({reason[:200]})",
            task_id=task_id,
            last_error=f"Could not check IsDown ({why}): {reason}",
        )
        return Step(state=publication.state)
    failures = _consecutive(publication, AttemptKind.RECONCILE, O.CHECK_FAILED)
    delay = retry_delay(attempt=failures, retry_after=getattr(error, "retry_after", None))
    _move(
        publication,
        S.RECONCILING,
        **_RELEASED,
        next_attempt_at=now + timedelta(seconds=delay),
        checks_failing_since=failing_since,
        last_error=f"Check failed, will try again in {delay:.1f} s: {reason}",
    )
    return Step(state=publication.state, run_again_in=countdown_for(delay))


def _consecutive(publication: Publication, kind: str, outcome: str) -> int:
    count = 0
    for row_kind, row_outcome in publication.attempt_rows.order_by("-number").values_list("kind", "outcome"):
        if row_kind != kind or row_outcome != outcome:
            break
        count += 1
    return count


def _watch(claim: _Claim, client: isdown.IsDownClient) -> Step:
    """After a resend: is there a second copy of our effect on IsDown?"""
    seen, error = _look(claim, client)
    now = timezone.now()
    with transaction.atomic():
        publication, attempt, ours = _locked_claim(claim)
        effect = matching.Effect.of(claim.request)
        twins: list[str] = []
        if seen is not None:
            if claim.creates:
                twins = matching.twins_of_create(
                    listing=seen,
                    effect=effect,
                    since=claim.since,
                    own_id=publication.remote_id,
                    claimed=claim.claimed_ids,
                )
            elif matching.extra_entries(
                remote=seen, effect=effect, since=claim.since, expected=_expected_entries(publication, effect)
            ):
                twins = [publication.remote_id]
        outcome = O.CHECK_FAILED if seen is None else O.TWIN_FOUND if twins else O.NO_TWIN
        _complete(attempt, outcome=outcome, error=error)
        if not (ours and publication.state == S.PUBLISHED and publication.watch_until is not None):
            return Step(state=publication.state)
        if twins:
            _duplicate(publication, twin_ids=twins, task_id=claim.task_id, how="a late twin appeared after a resend")
            return Step(state=publication.state)
        windows = settings.PUBLISH_WATCH_WINDOWS
        published_at = publication.published_at or now
        if seen is None:
            if now > publication.watch_until + timedelta(seconds=settings.PUBLISH_CHECK_PATIENCE):
                _move(
                    publication,
                    S.PUBLISHED,
                    action="publication.watch_incomplete",
                    summary=f"{publication}: the watch for a late twin could not finish "
                    f"({describe(error) if error else 'no answer'})",
                    task_id=claim.task_id,
                    watch_until=None,
                    next_attempt_at=None,
                    **_RELEASED,
                )
                return Step(state=publication.state)
            delay = retry_delay(attempt=_consecutive(publication, AttemptKind.WATCH, O.CHECK_FAILED))
            _move(publication, S.PUBLISHED, next_attempt_at=now + timedelta(seconds=delay), **_RELEASED)
            return Step(state=publication.state, run_again_in=countdown_for(delay))
        looks = publication.attempt_rows.filter(kind=AttemptKind.WATCH, outcome=O.NO_TWIN).count()
        if looks >= len(windows):
            _move(publication, S.PUBLISHED, watch_until=None, next_attempt_at=None, **_RELEASED)
            return Step(state=publication.state)
        when = max(now, published_at + timedelta(seconds=windows[looks]))
        _move(publication, S.PUBLISHED, next_attempt_at=when, **_RELEASED)
        return Step(state=publication.state, run_again_in=countdown_for((when - now).total_seconds()))


def _expected_entries(publication: Publication, effect: matching.Effect) -> int:
    """Ours, plus identical entries other publications of the same incident may have posted since ours."""
    since = publication.first_sent_at
    same = Publication.objects.filter(
        target_remote_id=publication.target_remote_id, request__body=publication.request.body, first_sent_at__gte=since
    ).exclude(pk=publication.pk)
    return 1 + same.exclude(state__in=[S.QUEUED, S.FAILED, S.ABANDONED]).count()


# --- Sweeper ------------------------------------------------------------------------------------------------
def sweep(*, task_id: str = "") -> list[tuple[int, float]]:
    """Move expired leases on, and return ``(publication id, countdown)`` for the caller to enqueue: each due
    publication that is not moving (never enqueued, or enqueued longer ago than SWEEP_INTERVAL), and each one
    just moved on, with the time until its next step.

    An expired ``sending`` lease means the worker died or stalled mid-call: the outcome is unknown, so the row is
    reconciled over the whole window before anything is sent again. An expired check lease just frees the check.
    Nothing here makes an HTTP call; enqueuing a row twice is harmless because ``process`` claims it once."""
    now = timezone.now()
    idle = now - timedelta(seconds=settings.SWEEP_INTERVAL)
    moved: list[tuple[int, float]] = []
    with transaction.atomic():
        expired = (
            Publication.objects.select_for_update(skip_locked=True, of=("self",), no_key=True)
            .select_related("team", "draft", "service", "request")
            .filter(lease_expires_at__lt=now, state__in=SCHEDULE_STATES)
        )
        for publication in expired:
            in_flight = PublishAttempt.objects.filter(publication=publication, finished_at__isnull=True)
            in_flight.update(
                finished_at=now, outcome=O.LOST, error="The worker stopped during the call (lease expired)."
            )
            if publication.state == S.SENDING:
                first_look = settings.PUBLISH_RECONCILE_WINDOWS[0]
                _move(
                    publication,
                    S.RECONCILING,
                    action="publication.lease_expired",
                    summary=f"{publication}: the worker's lease expired mid-call; checking IsDown before sending again",
                    task_id=task_id,
                    last_error="The worker stopped during the call; checking IsDown before sending again.",
                    next_attempt_at=now + timedelta(seconds=first_look),
                    unknown_since=now,
                    checks_failing_since=None,
                )
                moved.append((publication.pk, first_look))
            else:
                _move(publication, publication.state, next_attempt_at=now, **_RELEASED)
                moved.append((publication.pk, 0.0))
    blocked = (
        Publication.objects.filter(target_remote_id=OuterRef("target_remote_id"), state__in=UNSETTLED)
        .filter(due_before(OuterRef("due_at"), OuterRef("pk")))
        .exclude(target_remote_id="")
    )
    due = (
        Publication.objects.filter(
            Q(state__in=(S.QUEUED, S.RETRY_WAIT, S.RECONCILING, S.SCHEDULED))
            | Q(state=S.PUBLISHED, watch_until__isnull=False)
        )
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .filter(Q(last_enqueued_at__isnull=True) | Q(last_enqueued_at__lte=idle))
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
        .exclude(Q(state__in=(*CLAIMABLE_FOR_SEND, S.SCHEDULED)) & Exists(blocked))
        .exclude(state=S.PUBLISHED, next_attempt_at__isnull=True)
        .order_by("next_attempt_at", "pk")
        .values_list("pk", flat=True)
    )
    moved_ids = {pk for pk, _ in moved}
    return moved + [(pk, 0.0) for pk in due if pk not in moved_ids]


# --- Human actions ------------------------------------------------------------------------------------------
def _lock_for_human(publication_id: int, *, allowed: tuple[str, ...], expected_state: str | None) -> Publication:
    publication = _lock(publication_id)
    assert publication is not None
    if publication.state not in allowed or (expected_state is not None and publication.state != expected_state):
        raise InvalidTransition(
            f"This publication is now “{publication.get_state_display()}”; the action was not applied."
        )
    return publication


def refused_for_good(publication: Publication) -> bool:
    """A failed publication that sending again cannot fix: IsDown refused its last send (a 4xx other than 429).
    One that ran out of attempts may still go through later; one refused before sending (a hash mismatch) is a
    matter for an approver, not an edit."""
    if publication.state != S.FAILED:
        return False
    last_send = publication.attempt_rows.filter(kind=AttemptKind.SEND).order_by("-number").first()
    return last_send is not None and last_send.outcome == O.REJECTED


def retry_now(*, publication_id: int, user: User, expected_state: str | None = None) -> Publication:
    """Approver: a failed publication is queued again with a fresh attempt budget; one that needs attention
    is checked again over a fresh window, which by itself sends nothing."""
    with transaction.atomic():
        publication = _lock_for_human(publication_id, allowed=RETRYABLE_BY_HUMAN, expected_state=expected_state)
        access.require_role(user, publication.team, access.REVIEWING_ROLES, action="retry a publication")
        if refused_for_good(publication):
            raise InvalidTransition(
                "IsDown refused this request; sending it again would fail again. Edit and resubmit it."
            )
        now = timezone.now()
        if publication.state == S.FAILED:
            _move(
                publication,
                S.QUEUED,
                summary=f"{publication}: retry now, requested by {user.get_username()}",
                actor=user,
                attempts=0,
            )
        else:
            _move(
                publication,
                S.RECONCILING,
                summary=f"{publication}: check IsDown again, requested by {user.get_username()}",
                actor=user,
                next_attempt_at=now,
                unknown_since=now,
                checks_failing_since=None,
            )
        enqueue.publication_on_commit(publication.pk)
    return publication


def edit_and_resubmit(*, publication_id: int, user: User, expected_state: str | None = None) -> Publication:
    """Responder or approver: a publication IsDown refused for good is superseded and its draft goes back to
    editing (workflow.reopen_after_refusal), to be resubmitted and reviewed as a new revision. Superseding
    releases the publications held behind it for the same incident."""
    with transaction.atomic():
        publication = _lock_for_human(publication_id, allowed=(S.FAILED,), expected_state=expected_state)
        access.require_role(user, publication.team, access.DRAFTING_ROLES, action="edit and resubmit a draft")
        if not refused_for_good(publication):
            raise InvalidTransition("This publication may still go through: retry it rather than resubmitting it.")
        # The draft leaves the publishing states first, so superseding this row does not move it again.
        workflow.reopen_after_refusal(draft_id=publication.draft_id, user=user)
        _move(
            publication,
            S.SUPERSEDED,
            summary=f"{publication}: superseded, its draft reopened for editing by {user.get_username()}",
            actor=user,
            last_error=publication.last_error,  # IsDown's reason stays on the superseded row
        )
    return publication


def send_again(*, publication_id: int, user: User, expected_state: str | None = None) -> Publication:
    """Approver, after seeing the evidence: send the approved request again even though an earlier attempt
    may have landed. The only path to a send that reconciliation did not clear."""
    with transaction.atomic():
        publication = _lock_for_human(publication_id, allowed=(S.NEEDS_ATTENTION,), expected_state=expected_state)
        access.require_role(user, publication.team, access.REVIEWING_ROLES, action="send a publication again")
        _move(
            publication,
            S.QUEUED,
            summary=f"{publication}: send again, confirmed by {user.get_username()}",
            actor=user,
            attempts=0,
            context={"last_error": publication.last_error[:300]},
        )
        enqueue.publication_on_commit(publication.pk)
    return publication


def abandon(*, publication_id: int, user: User, reason: str, expected_state: str | None = None) -> Publication:
    """Approver: give up on a failed or stuck publication, with a reason. It will never be sent, and the
    publications behind it for the same incident go on."""
    reason = (reason or "").strip()
    if not reason:
        raise VerificationFailed("Say why it is abandoned: a reason is required.")
    with transaction.atomic():
        publication = _lock_for_human(publication_id, allowed=RETRYABLE_BY_HUMAN, expected_state=expected_state)
        access.require_role(user, publication.team, access.REVIEWING_ROLES, action="abandon a publication")
        _move(
            publication,
            S.ABANDONED,
            summary=f"{publication}: abandoned by {user.get_username()}: {reason[:200]}",
            actor=user,
            decision_note=reason[:2000],
            changes={"reason": [None, reason[:500]]},
        )
    return publication


def cancel_scheduled(*, publication_id: int, user: User, expected_state: str | None = None) -> Publication:
    """Approver: a scheduled publication will not go out (issue 12 §7); possible until it is sent (a worker queues
    and claims it in one transaction). The ones behind it for the same incident go on."""
    with transaction.atomic():
        publication = _lock_for_human(publication_id, allowed=CANCELLABLE, expected_state=expected_state)
        access.require_role(user, publication.team, access.REVIEWING_ROLES, action="cancel a scheduled publication")
        _move(
            publication,
            S.ABANDONED,
            summary=f"{publication}: cancelled before its scheduled time by {user.get_username()}",
            actor=user,
            decision_note=f"Cancelled by {user.get_username()} before it was sent (it was scheduled for "
            f"{publication.due_at:%Y-%m-%d %H:%M %Z}).",
            changes={"due_at": [publication.due_at.isoformat(), None]},
        )
    return publication


def acknowledge_duplicate(
    *, publication_id: int, user: User, note: str, expected_state: str | None = None
) -> Publication:
    """Approver: a duplicate that cannot be taken back (an update has no id on IsDown) is acknowledged."""
    note = (note or "").strip()
    if not note:
        raise VerificationFailed("Say what was done about it: a note is required.")
    with transaction.atomic():
        publication = _lock_for_human(publication_id, allowed=(S.DUPLICATE_DETECTED,), expected_state=expected_state)
        access.require_role(user, publication.team, access.REVIEWING_ROLES, action="acknowledge a duplicate")
        _move(
            publication,
            S.PUBLISHED,
            action="publication.duplicate_acknowledged",
            summary=f"{publication}: duplicate acknowledged by {user.get_username()}: {note[:200]}",
            actor=user,
            decision_note=note[:2000],
            changes={"note": [None, note[:500]]},
        )
    return publication


def delete_duplicates(
    *, publication_id: int, user: User, expected_state: str | None = None, client: isdown.IsDownClient | None = None
) -> Publication:
    """Approver: delete the extra incidents of a duplicated create on IsDown (each DELETE a recorded attempt),
    then settle the publication. Its own incident stays."""
    with transaction.atomic():
        publication = _lock_for_human(publication_id, allowed=(S.DUPLICATE_DETECTED,), expected_state=expected_state)
        access.require_role(user, publication.team, access.REVIEWING_ROLES, action="delete a duplicate")
        if publication.request.method != "POST":
            raise InvalidTransition(
                "A duplicated update cannot be deleted on IsDown (updates have no id): acknowledge it."
            )
        extra = [i for i in publication.duplicate_remote_ids if i != publication.remote_id]
        attempts = [
            PublishAttempt.objects.create(
                publication=publication,
                number=_next_attempt_number(publication) + n,
                kind=AttemptKind.DELETE,
                started_at=timezone.now(),
                method="DELETE",
                path=isdown.incident_path(remote_id),
            )
            for n, remote_id in enumerate(extra)
        ]
    own_client = client is None
    client = client or make_client()
    failures: list[str] = []
    try:
        for attempt, remote_id in zip(attempts, extra, strict=True):
            error: BaseException | None = None
            try:
                client.delete_incident(remote_id)
            except isdown.IsDownError as exc:
                error = exc
                failures.append(f"#{remote_id}: {describe(exc)}")
            with transaction.atomic():
                row = PublishAttempt.objects.select_for_update(no_key=True).get(pk=attempt.pk)
                _complete(row, outcome=O.DELETED if error is None else O.CHECK_FAILED, error=error)
    finally:
        if own_client:
            client.close()
    if failures:
        raise VerificationFailed("Could not delete on IsDown: " + "; ".join(failures))
    with transaction.atomic():
        publication = _lock_for_human(publication_id, allowed=(S.DUPLICATE_DETECTED,), expected_state=None)
        _move(
            publication,
            S.PUBLISHED,
            action="publication.duplicate_deleted",
            summary=f"{publication}: duplicate incident(s) {', '.join('#' + i for i in extra)} deleted on IsDown "
            f"by {user.get_username()}",
            actor=user,
            decision_note=f"Deleted the duplicate(s) {', '.join('#' + i for i in extra)} on IsDown.",
            changes={"deleted": [None, extra]},
        )
    return publication


def mark_published(
    *,
    publication_id: int,
    user: User,
    remote_id: str,
    expected_state: str | None = None,
    client: isdown.IsDownClient | None = None,
) -> Publication:
    """Approver: adopt IsDown incident ``remote_id`` as this publication's effect, after a GET shows it is an
    incident of the right service (and, for an update, the right incident). The GET is a recorded attempt."""
    remote_id = remote_id.strip().lstrip("#")
    if not remote_id.isascii() or not remote_id.isdigit() or len(remote_id) > 18:
        raise VerificationFailed("An IsDown incident id is a number, like the one in the incident's IsDown URL.")
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
    problem = _verification_problem(publication=publication, remote=remote, error=error, remote_id=remote_id)
    with transaction.atomic():
        row = PublishAttempt.objects.select_for_update(no_key=True).get(pk=attempt.pk)
        _complete(row, outcome=O.VERIFIED if problem is None else O.NOT_VERIFIED, error=error, note=problem or "")
    if problem is not None:
        raise VerificationFailed(problem)
    assert remote is not None
    with transaction.atomic():
        publication = _lock_for_human(publication_id, allowed=(seen_state,), expected_state=None)
        _publish(
            publication,
            remote=remote,
            now=timezone.now(),
            task_id="",
            how=f"marked published by {user.get_username()}",
            actor=user,
            action="publication.marked_published",
        )
    return publication


def _verification_problem(
    *, publication: Publication, remote: isdown.RemoteIncident | None, error: BaseException | None, remote_id: str
) -> str | None:
    if error is not None:
        if isinstance(error, isdown.Rejected) and error.status_code == 404:
            return f"IsDown has no incident #{remote_id}."
        return f"Could not check incident #{remote_id} on IsDown: {describe(error)}"
    assert remote is not None
    if remote.service_id != publication.service.isdown_service_id:
        return f"Incident #{remote_id} belongs to another IsDown service (#{remote.service_id})."
    if publication.request.method != "POST":
        if publication.target_remote_id != remote.id:
            return f"This update was for incident #{publication.target_remote_id}, not #{remote_id}."
        return None
    other = Incident.objects.filter(remote_id=remote.id).first()
    if other is not None:
        return f"Incident #{remote_id} is already linked to {other}."
    return None


# --- Sync's view: what landed of ours ---------------------------------------------------------------------------
def attribute(*, incident: Incident, remote: isdown.RemoteIncident, task_id: str = "") -> list[Publication]:
    """Sync found ``remote``: adopt every undecided publication of this incident whose effect it shows (an
    earlier attempt landed after all), so it is never mistaken for drift nor sent again. Caller's transaction,
    incident row locked. Publications in flight are left to their worker."""
    adopted = []
    pending = (
        # A row a worker holds right now is left to it (and waiting for it here could deadlock on the incident).
        Publication.objects.select_for_update(of=("self",), no_key=True, skip_locked=True)
        .select_related("request", "revision", "draft", "team", "service", "incident")
        .filter(target_remote_id=remote.id, state__in=(S.RETRY_WAIT, S.RECONCILING, S.FAILED, S.NEEDS_ATTENTION))
        .exclude(first_sent_at__isnull=True)
        .order_by("pk")
    )
    for publication in pending:
        effect = matching.Effect.of(approved_request(publication))
        sent_at = publication.first_sent_at
        assert sent_at is not None  # the query leaves out what was never sent
        verdict = matching.judge_update(remote=remote, effect=effect, since=sent_at)
        if verdict.found is not None:
            _publish(
                publication,
                remote=remote,
                now=timezone.now(),
                task_id=task_id,
                how=f"found by sync: {verdict.reason}",
                action="publication.adopted_by_sync",
            )
            adopted.append(publication)
    return adopted


def pending_effects(remote_id: str) -> list[matching.Effect]:
    """The effects of this incident's publications that may be on IsDown without being recorded yet (in flight
    or undecided, or a late twin of one that was sent again: published with a watch, or duplicate detected): sync
    does not call what they show drift."""
    rows = Publication.objects.filter(
        Q(state__in=HOLDING_PUBLICATION_STATES)
        | Q(state=S.DUPLICATE_DETECTED)
        | Q(state=S.PUBLISHED, watch_until__isnull=False),
        target_remote_id=remote_id,
    ).select_related("request")
    return [matching.Effect.of(approved_request(p)) for p in rows if p.first_sent_at is not None]
