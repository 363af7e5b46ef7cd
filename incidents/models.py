"""The domain: teams and their services, the local copy of IsDown incidents, drafts and their review,
the publishing outbox, and the append-only audit log.

Models hold data and the constraints the database can enforce. State changes live in workflow.py,
publishing.py and sync.py; nothing happens in save() or in signals.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Upper
from django.utils import timezone

from . import audit_actions


class Role(models.TextChoices):
    RESPONDER = "responder", "Responder"
    APPROVER = "approver", "Approver"
    AUDITOR = "auditor", "Auditor"


class Severity(models.TextChoices):
    MINOR = "minor", "Minor"
    MAJOR = "major", "Major"


class Stage(models.TextChoices):
    INVESTIGATING = "investigating", "Investigating"
    IDENTIFIED = "identified", "Identified"
    MONITORING = "monitoring", "Monitoring"
    RESOLVED = "resolved", "Resolved"


TITLE_MAX_LENGTH = 255
DESCRIPTION_MAX_LENGTH = 10_000
COMMENT_MAX_LENGTH = 2_000


DEFAULT_UPDATE_INTERVAL_MINUTES = 30
DEFAULT_REVIEW_ESCALATION_MINUTES = 10


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Reminders (issue 12 §5): an open incident's next update is due this long after the last approved one, and a
    # revision waiting this long for review is escalated to every approver of the team.
    update_interval_minutes = models.PositiveIntegerField(
        default=DEFAULT_UPDATE_INTERVAL_MINUTES,
        validators=[MinValueValidator(1), MaxValueValidator(24 * 60)],
        help_text="Minutes after an approved change before an open incident's next update is due.",
    )
    review_escalation_minutes = models.PositiveIntegerField(
        default=DEFAULT_REVIEW_ESCALATION_MINUTES,
        validators=[MinValueValidator(1), MaxValueValidator(24 * 60)],
        help_text="Minutes a revision may wait for review before every approver of the team is emailed.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["user", "team"], name="membership_one_role_per_team"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} — {self.get_role_display()} in {self.team}"


class Service(models.Model):
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="services")
    name = models.CharField(max_length=100)
    isdown_service_id = models.PositiveBigIntegerField(
        unique=True, verbose_name="IsDown service id", help_text="The numeric id of the custom service on IsDown."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "name"]

    def __str__(self) -> str:
        return f"{self.name} (#{self.isdown_service_id})"


class Incident(models.Model):
    """The local copy of one IsDown incident. `remote_id` stays empty until it is published.

    Title, severity and stage hold whatever IsDown sent, even a value this app does not know (a new severity,
    a title over our own limit): they are shown as sent and never stop recording or sync. ``remote_payload``
    keeps IsDown's last answer as it came.
    """

    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="incidents")
    remote_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    title = models.TextField()
    severity = models.TextField(choices=Severity.choices, default=Severity.MINOR)
    stage = models.TextField(choices=Stage.choices, default=Stage.INVESTIGATING)
    description = models.TextField(blank=True)
    resolved = models.BooleanField(default=False)
    resolved_at = models.DateTimeField(null=True, blank=True)
    remote_created_at = models.DateTimeField(null=True, blank=True)
    remote_updated_at = models.DateTimeField(null=True, blank=True)
    remote_url = models.URLField(max_length=500, blank=True)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    missing_on_remote = models.BooleanField(default=False)
    drifted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The time of the latest local or remote activity: the incident list sorts by it.
    last_activity_at = models.DateTimeField(auto_now_add=True, db_index=True)
    remote_payload = models.JSONField(null=True, blank=True)
    # When the public expects the next update (issue 12 §5): set on each approval to the team's interval, adjustable
    # by the team (reminders.py); empty until the first reminder check sets it from the team's default.
    next_update_due_at = models.DateTimeField(null=True, blank=True)
    # One local incident across several services (issue 12): the IsDown incidents of one outage share a group.
    group = models.ForeignKey(
        "IncidentGroup", on_delete=models.PROTECT, null=True, blank=True, related_name="incidents"
    )

    class Meta:
        ordering = ["-last_activity_at", "-id"]
        # The incident list's title search (title__icontains): a trigram index rather than a scan.
        indexes = [GinIndex(OpClass(Upper("title"), name="gin_trgm_ops"), name="incident_title_trgm")]

    def __str__(self) -> str:
        return f"{self.title} (#{self.remote_id})" if self.remote_id else self.title


class IncidentUpdate(models.Model):
    """One entry of the incident's remote `updates` list, oldest first (IsDown gives updates no id)."""

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="updates")
    position = models.PositiveIntegerField()
    stage = models.TextField(choices=Stage.choices)  # as IsDown sent it, known to us or not
    description = models.TextField(blank=True)
    remote_created_at = models.DateTimeField()

    class Meta:
        ordering = ["incident", "position"]
        constraints = [models.UniqueConstraint(fields=["incident", "position"], name="update_position_unique")]

    def __str__(self) -> str:
        return f"{self.get_stage_display()} update {self.position} of incident {self.incident_id}"


class DraftKind(models.TextChoices):
    OPEN = "open", "New incident"
    UPDATE = "update", "Update"
    # A grouped incident gains a service (a create on IsDown) or loses one (that service's incident resolved).
    ADD_SERVICE = "add_service", "Add a service"
    REMOVE_SERVICE = "remove_service", "Remove a service"


# The kinds that change an existing incident (the draft names it); only ``open`` starts one.
INCIDENT_DRAFT_KINDS = (DraftKind.UPDATE, DraftKind.ADD_SERVICE, DraftKind.REMOVE_SERVICE)


class DraftState(models.TextChoices):
    DRAFT = "draft", "Draft"
    IN_REVIEW = "in_review", "In review"
    CHANGES_REQUESTED = "changes_requested", "Changes requested"
    APPROVED = "approved", "Approved"
    PUBLISHING = "publishing", "Publishing"
    PUBLISHED = "published", "Published"
    FAILED = "failed", "Failed"
    NEEDS_ATTENTION = "needs_attention", "Needs attention"
    ABANDONED = "abandoned", "Abandoned"
    REJECTED = "rejected", "Rejected"
    DISCARDED = "discarded", "Discarded"


# The groups of draft states, each named once. Its author may still edit (and submit, or discard) it:
EDITABLE_DRAFT_STATES = (DraftState.DRAFT, DraftState.CHANGES_REQUESTED)
# Locked for editing while approvers decide on it; its author may withdraw it.
REVIEWABLE_DRAFT_STATES = (DraftState.IN_REVIEW,)
# Not on IsDown yet, and not given up: an incident's timeline shows these drafts as pending.
PENDING_DRAFT_STATES = (DraftState.DRAFT, DraftState.IN_REVIEW, DraftState.CHANGES_REQUESTED, DraftState.APPROVED)
# Its authors still follow it (to edit it, to see it published, to read a verdict): the dashboard's "My drafts".
FOLLOWED_DRAFT_STATES = (
    DraftState.DRAFT,
    DraftState.IN_REVIEW,
    DraftState.CHANGES_REQUESTED,
    DraftState.APPROVED,
    DraftState.PUBLISHING,
    DraftState.FAILED,
    DraftState.NEEDS_ATTENTION,
    DraftState.REJECTED,
)
# After approval a draft mirrors its publications (workflow.follow_publications); these are its states then.
PUBLISHING_DRAFT_STATES = (
    DraftState.APPROVED,
    DraftState.PUBLISHING,
    DraftState.PUBLISHED,
    DraftState.FAILED,
    DraftState.NEEDS_ATTENTION,
    DraftState.ABANDONED,
)


# The fields of a draft that say what the public sees: what a revision freezes, the form edits and diffs show.
DRAFT_FIELDS = ("title", "severity", "description", "stage")


class Draft(models.Model):
    """A proposed change to what the public sees. Only workflow.py changes its state."""

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="drafts")
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="drafts")
    incident = models.ForeignKey(Incident, on_delete=models.PROTECT, null=True, blank=True, related_name="drafts")
    kind = models.CharField(max_length=20, choices=DraftKind.choices)
    title = models.CharField(max_length=TITLE_MAX_LENGTH, blank=True)
    severity = models.CharField(max_length=10, choices=Severity.choices, blank=True)
    description = models.TextField(blank=True)
    stage = models.CharField(max_length=20, choices=Stage.choices, blank=True)
    state = models.CharField(max_length=20, choices=DraftState.choices, default=DraftState.DRAFT, db_index=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    last_editor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # Everyone who ever saved a version of it (the author first): all co-authors, none of whom may review it.
    editors = ArrayField(models.BigIntegerField(), default=list)
    version = models.PositiveIntegerField(default=1)
    # A correction of the incident's update at this position (IsDown cannot edit a posted update: a correction
    # is a new one). Set when the draft is started from "Correct the last update"; shown on the review.
    corrects_position = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # A new incident across several services: the ids of the services besides ``service`` (the first), same team.
    also_service_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)
    # The local incident its IsDown incidents are grouped under: set on approval when it spans several services.
    group = models.ForeignKey("IncidentGroup", on_delete=models.PROTECT, null=True, blank=True, related_name="drafts")

    class Meta:
        ordering = ["-updated_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=DraftKind.values), name="draft_kind_valid"),
            models.CheckConstraint(
                condition=Q(corrects_position__isnull=True) | Q(kind="update"), name="draft_correction_is_update"
            ),
            models.CheckConstraint(condition=Q(state__in=DraftState.values), name="draft_state_valid"),
            # An update targets an incident; a new incident has none yet.
            models.CheckConstraint(
                condition=(
                    Q(kind="open", incident__isnull=True)
                    | Q(kind__in=["update", "add_service", "remove_service"], incident__isnull=False)
                ),
                name="draft_kind_matches_incident",
            ),
        ]

    def __str__(self) -> str:
        return f"Draft #{self.pk}: {self.title or self.get_kind_display()}"

    @property
    def is_editable(self) -> bool:
        return self.state in EDITABLE_DRAFT_STATES

    @property
    def corrects_update_number(self) -> int | None:
        """The corrected update as people count them (the first is 1; positions start at 0)."""
        return None if self.corrects_position is None else self.corrects_position + 1

    @property
    def service_ids(self) -> list[int]:
        """Every service the draft names, its own ``service`` first."""
        return [self.service_id, *(pk for pk in self.also_service_ids if pk != self.service_id)]


class Revision(models.Model):
    """An immutable snapshot made on submit: the fields and, in ``requests``, the exact request to each target.

    ``sha256`` covers the whole set of requests (``isdown.requests_sha256``); a review approves that hash. The
    database refuses UPDATE and DELETE on revisions and their requests (migration 0004).
    """

    draft = models.ForeignKey(Draft, on_delete=models.PROTECT, related_name="revisions")
    number = models.PositiveIntegerField()
    fields = models.JSONField()
    sha256 = models.CharField(max_length=64)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    last_editor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # The draft's editors when it was submitted, sorted: its co-authors for the four-eyes rule.
    editors = ArrayField(models.BigIntegerField(), default=list)
    submitted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["draft", "number"]
        constraints = [
            models.UniqueConstraint(fields=["draft", "number"], name="revision_number_unique"),
            # Targets of Review's composite foreign keys (migrations 0002 and 0006).
            models.UniqueConstraint(fields=["id", "author", "last_editor"], name="revision_id_author_editor"),
            models.UniqueConstraint(fields=["id", "editors"], name="revision_id_editors"),
        ]

    def __str__(self) -> str:
        return f"Revision {self.number} of draft #{self.draft_id}"


class RevisionRequest(models.Model):
    """One exact request of a revision, to one target: a service, and for an update the IsDown incident.

    ``body`` is the JSON text exactly as it goes on the wire (UTF-8), stored as text so no round trip can
    reorder or re-encode it; ``sha256`` is ``isdown.Request.sha256`` of method, path and body.
    """

    revision = models.ForeignKey(Revision, on_delete=models.PROTECT, related_name="requests")
    position = models.PositiveSmallIntegerField()
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="+")
    # The IsDown incident a PATCH addresses ("" for a create): publications keep order per this id.
    target_remote_id = models.CharField(max_length=64, blank=True)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=300)
    body = models.TextField()
    sha256 = models.CharField(max_length=64)

    class Meta:
        ordering = ["revision", "position"]
        constraints = [
            models.UniqueConstraint(fields=["revision", "position"], name="revision_request_position_unique"),
            models.UniqueConstraint(fields=["revision", "service"], name="revision_request_one_per_service"),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


class ReviewDecision(models.TextChoices):
    APPROVE = "approve", "Approved"
    REQUEST_CHANGES = "request_changes", "Changes requested"
    REJECT = "reject", "Rejected"
    # An approver published their own revision without a second approver (issue 12 §4): the one exception to four
    # eyes the database allows, with a reason and the hash; a post-review by someone else must follow.
    BREAK_GLASS = "break_glass", "Published without review (break-glass)"


# The decisions that publish: each binds the hash its reviewer saw.
PUBLISHING_DECISIONS = (ReviewDecision.APPROVE, ReviewDecision.BREAK_GLASS)


class Review(models.Model):
    """One decision on one revision.

    The revision's author, last editor and every editor are copied here so CHECK constraints can enforce four
    eyes (migration 0006: the reviewer is none of them); composite foreign keys (migrations 0002 and 0006) make
    sure the copies match the revision.
    """

    revision = models.OneToOneField(Revision, on_delete=models.PROTECT, related_name="review")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    revision_author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    revision_last_editor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    revision_editors = ArrayField(models.BigIntegerField(), default=list)
    decision = models.CharField(max_length=20, choices=ReviewDecision.choices)
    comment = models.TextField(blank=True, max_length=COMMENT_MAX_LENGTH)
    # The revision's SHA-256 as the reviewer saw it: what an approval approves.
    sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=~Q(decision__in=["approve", "break_glass"]) | ~Q(sha256=""), name="review_approval_binds_hash"
            ),
            # Break-glass is the only decision its revision's own author or editor may take (with a reason, below).
            models.CheckConstraint(
                condition=Q(decision="break_glass")
                | (~Q(reviewer=F("revision_author")) & ~Q(reviewer=F("revision_last_editor"))),
                name="review_four_eyes",
            ),
            # Target of BreakGlassPostReview's composite foreign key: the post-review names who broke the glass.
            models.UniqueConstraint(fields=["id", "reviewer"], name="review_id_reviewer"),
            models.CheckConstraint(condition=Q(decision__in=ReviewDecision.values), name="review_decision_valid"),
            models.CheckConstraint(
                condition=Q(decision="approve") | ~Q(comment=""), name="review_comment_required_unless_approve"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_decision_display()} revision {self.revision_id}"

    @property
    def is_break_glass(self) -> bool:
        return self.decision == ReviewDecision.BREAK_GLASS


class PublicationState(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENDING = "sending", "Sending"
    RETRY_WAIT = "retry_wait", "Waiting to retry"
    RECONCILING = "reconciling", "Checking IsDown"
    PUBLISHED = "published", "Published"
    FAILED = "failed", "Failed"
    NEEDS_ATTENTION = "needs_attention", "Needs attention"
    DUPLICATE_DETECTED = "duplicate_detected", "Duplicate detected"
    ABANDONED = "abandoned", "Abandoned"
    # IsDown refused it for good (a 4xx); its draft went back to editing and a new revision replaces it.
    SUPERSEDED = "superseded", "Superseded"
    # Approved to go out at a later time (issue 12 §7): waits for ``due_at``, then is queued like any other.
    SCHEDULED = "scheduled", "Scheduled"


# A publication in one of these states holds the ones approved after it for the same IsDown incident: it is
# in flight, or waits for a human. A partial unique index allows at most one per incident (migration 0004).
HOLDING_PUBLICATION_STATES = (
    PublicationState.SENDING,
    PublicationState.RETRY_WAIT,
    PublicationState.RECONCILING,
    PublicationState.FAILED,
    PublicationState.NEEDS_ATTENTION,
)
# Nothing more will happen without a human (or ever): the page stops polling.
FINAL_PUBLICATION_STATES = (
    PublicationState.PUBLISHED,
    PublicationState.FAILED,
    PublicationState.NEEDS_ATTENTION,
    PublicationState.DUPLICATE_DETECTED,
    PublicationState.ABANDONED,
    PublicationState.SUPERSEDED,
)
# A human must decide; everyone concerned is emailed when a publication gets here.
HUMAN_PUBLICATION_STATES = (
    PublicationState.FAILED,
    PublicationState.NEEDS_ATTENTION,
    PublicationState.DUPLICATE_DETECTED,
)


class Publication(models.Model):
    """The outbox row for one approved request: one revision, one target. Only publishing.py moves it.

    Publications for the same IsDown incident (``target_remote_id``) go out one at a time, in the order they are
    due (``due_at``: the approval, or the time it was scheduled for), then ``id`` (approvals of one incident are
    serialised on its row).
    """

    revision = models.ForeignKey(Revision, on_delete=models.PROTECT, related_name="publications")
    request = models.OneToOneField(RevisionRequest, on_delete=models.PROTECT, related_name="publication")
    draft = models.ForeignKey(Draft, on_delete=models.PROTECT, related_name="publications")
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="publications")
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="publications")
    incident = models.ForeignKey(Incident, on_delete=models.PROTECT, null=True, blank=True, related_name="publications")
    target_remote_id = models.CharField(max_length=64, blank=True)
    state = models.CharField(
        max_length=20, choices=PublicationState.choices, default=PublicationState.QUEUED, db_index=True
    )
    # When it is due: its approval, or the later time the approver scheduled it for. Publications of one IsDown
    # incident go out in (due_at, id) order (issue 12 §7).
    due_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    # Written only by publishing._move: state, attempt_token, lease_expires_at, next_attempt_at, last_error.
    attempt_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_error = models.TextField(blank=True)
    # When the first send started: what a check on IsDown looks back to (less a clock-skew margin).
    first_sent_at = models.DateTimeField(null=True, blank=True)
    # When the current doubt began (an unknown outcome, a lost lease): the reconcile windows count from here.
    unknown_since = models.DateTimeField(null=True, blank=True)
    # When checks on IsDown began failing in a row (a blip is retried; a long outage goes to a human).
    checks_failing_since = models.DateTimeField(null=True, blank=True)
    # After a resend, a late twin is watched for until then.
    watch_until = models.DateTimeField(null=True, blank=True)
    last_enqueued_at = models.DateTimeField(null=True, blank=True)
    remote_id = models.CharField(max_length=64, blank=True)
    duplicate_remote_ids = models.JSONField(default=list, blank=True)
    result = models.JSONField(null=True, blank=True)
    # A human's reason, when they abandoned it or settled a duplicate.
    decision_note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=PublicationState.values), name="publication_state_valid"),
            models.UniqueConstraint(fields=["revision", "service"], name="publication_one_per_revision_target"),
            # One in flight (or held for a human) per IsDown incident: the order's backstop.
            models.UniqueConstraint(
                fields=["target_remote_id"],
                condition=Q(state__in=[s.value for s in HOLDING_PUBLICATION_STATES]) & ~Q(target_remote_id=""),
                name="publication_one_holding_per_incident",
            ),
        ]

    def __str__(self) -> str:
        return f"Publication #{self.pk} of draft #{self.draft_id}"

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_PUBLICATION_STATES and self.watch_until is None

    @property
    def needs_human(self) -> bool:
        return self.state in HUMAN_PUBLICATION_STATES


class AttemptKind(models.TextChoices):
    SEND = "send", "Send"
    RECONCILE = "reconcile", "Check"
    WATCH = "watch", "Watch for a twin"
    VERIFY = "verify", "Verify"
    DELETE = "delete", "Delete duplicate"


class AttemptOutcome(models.TextChoices):
    PUBLISHED = "published", "Published"
    RETRY = "retry", "Not processed: retry"
    REJECTED = "rejected", "Rejected"
    UNKNOWN = "unknown", "Outcome unknown"
    NOT_SENT = "not_sent", "Not sent"
    LOST = "lost", "Lost with the worker"
    LATE = "late", "Answered after losing the lease"
    FOUND = "found", "Found"
    ABSENT = "absent", "Not there"
    AMBIGUOUS = "ambiguous", "Ambiguous"
    CHECK_FAILED = "check_failed", "Check failed"
    NO_TWIN = "no_twin", "No twin"
    TWIN_FOUND = "twin_found", "Twin found"
    VERIFIED = "verified", "Verified"
    NOT_VERIFIED = "not_verified", "Not verified"
    DELETED = "deleted", "Deleted"


class PublishAttempt(models.Model):
    """One HTTP call made for a publication: what was asked (never the key) and what came back."""

    publication = models.ForeignKey(Publication, on_delete=models.PROTECT, related_name="attempt_rows")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=20, choices=AttemptKind.choices, default=AttemptKind.SEND)
    # A send's claim: the fence re-checks it is still the publication's right before the call.
    token = models.UUIDField(null=True, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=300)
    request_sha256 = models.CharField(max_length=64, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=AttemptOutcome.choices, blank=True)
    response_excerpt = models.TextField(blank=True)
    error = models.TextField(blank=True)
    next_retry_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["publication", "number"]
        constraints = [models.UniqueConstraint(fields=["publication", "number"], name="attempt_number_unique")]

    def __str__(self) -> str:
        return f"Attempt {self.number} of publication #{self.publication_id}"


class NotificationState(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    GAVE_UP = "gave_up", "Gave up"


class Notification(models.Model):
    """One email in the durable outbox: written in the transaction of what it tells, delivered by a worker,
    retried with backoff, its delivery state visible. Only notifications.py writes it."""

    team = models.ForeignKey(Team, on_delete=models.PROTECT, null=True, blank=True, related_name="notifications")
    kind = models.CharField(max_length=40)
    subject = models.CharField(max_length=300)
    body = models.TextField()
    recipients = models.JSONField(default=list)
    target_type = models.CharField(max_length=40, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    state = models.CharField(
        max_length=10, choices=NotificationState.choices, default=NotificationState.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(db_index=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=NotificationState.values), name="notification_state_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.get_state_display()}: {self.subject}"


class UserPreference(models.Model):
    """A user's display settings. Only preferences.py writes it."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preference")
    # An IANA zone name ("Europe/Lisbon"); "" means the site's (settings.TIME_ZONE).
    time_zone = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        return f"Preferences of user #{self.user_id}"


class SystemMark(models.Model):
    """A mark the system leaves for itself in Postgres: worker and beat heartbeats (``worker:<name>``, ``beat``)
    and until when sync waits for IsDown's Retry-After (``sync.paused_until``)."""

    name = models.CharField(max_length=200, primary_key=True)
    at = models.DateTimeField()
    detail = models.CharField(max_length=300, blank=True)

    def __str__(self) -> str:
        return f"{self.name} @ {self.at:%Y-%m-%d %H:%M:%S}"


class AuditEvent(models.Model):
    """Append-only, hash-chained record of every action. Written only by audit.record().

    No foreign keys: actor, team and target are ids plus label snapshots, so history survives deletions.
    The database refuses UPDATE and DELETE on this table (trigger in migration 0002).
    """

    seq = models.BigIntegerField(unique=True)
    created_at = models.DateTimeField()
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_label = models.CharField(max_length=150)
    team_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    team_label = models.CharField(max_length=100, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=40, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=300, blank=True)
    summary = models.CharField(max_length=500)
    changes = models.JSONField(default=dict, blank=True)
    context = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    # Chain format (audit.py): 1 = chained by record() under the append lock (canonical JSON object); 2 = sealed
    # from an AuditEntry by the sealer (canonical JSON array that also binds the version and the entry id).
    chain_version = models.SmallIntegerField(default=1, db_default=1)
    # The AuditEntry this event seals (version 2): unique, so no entry is sealed twice.
    entry_id = models.BigIntegerField(null=True, blank=True, unique=True)

    class Meta:
        ordering = ["-seq"]
        indexes = [
            models.Index(fields=["team_id", "-seq"], name="audit_team_seq"),
            models.Index(fields=["actor_id", "-seq"], name="audit_actor_seq"),
            models.Index(fields=["target_type", "target_id", "-seq"], name="audit_target_seq"),
            models.Index(fields=["created_at"], name="audit_created_at"),
            # The "label contains" filter (target_label__icontains is UPPER(...) LIKE '%x%'): a scan without it.
            GinIndex(OpClass(Upper("target_label"), name="gin_trgm_ops"), name="audit_target_label_trgm"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action}: {self.summary}"

    @property
    def action_label(self) -> str:
        """The action as people read it (audit_actions.py); an action older than the registry reads as itself."""
        return audit_actions.label(self.action)

    def change_lines(self) -> list[tuple[str, str, str]]:
        """``[(field, old, new)]`` as display text from ``{field: [old, new]}``; tolerant of odd shapes (the rows
        are history: any shape ever written must still display)."""
        lines = []
        for name, pair in sorted((self.changes or {}).items()):
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                lines.append((str(name), _display(pair[0]), _display(pair[1])))
            else:
                lines.append((str(name), "", _display(pair)))
        return lines


def _display(value: Any) -> str:
    if value is None or value == "":
        return "∅"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# --- Templates and the public-text lint (issue 12, sections 2 and 3) -------------------------------------------
class TemplateKind(models.TextChoices):
    OPEN = "open", "New incident"
    UPDATE = "update", "Update"
    RESOLVE = "resolve", "Resolve"


TEMPLATE_NAME_MAX_LENGTH = 100


class DraftTemplate(models.Model):
    """A team's starting text for a new incident, an update or a resolve. Only draft_templates.py writes it.

    Its text may hold placeholders from a fixed list (``draft_templates.PLACEHOLDERS``), replaced by plain string
    substitution when a responder picks it: approver-written text never reaches a template engine."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="draft_templates")
    kind = models.CharField(max_length=10, choices=TemplateKind.choices)
    name = models.CharField(max_length=TEMPLATE_NAME_MAX_LENGTH)
    title = models.CharField(max_length=TITLE_MAX_LENGTH, blank=True)
    # Blank: keep what the form has (an update keeps the incident's severity).
    severity = models.CharField(max_length=10, choices=Severity.choices, blank=True)
    stage = models.CharField(max_length=20, choices=Stage.choices, blank=True)
    description = models.TextField(blank=True, max_length=DESCRIPTION_MAX_LENGTH)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["team__name", "kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="draft_template_name_unique_per_team"),
            models.CheckConstraint(condition=Q(kind__in=TemplateKind.values), name="draft_template_kind_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"


class AcceptedWarning(models.Model):
    """An approver's judgement that one lint warning on one revision is fine to publish (public_text.py writes
    it, audited). The warning is named by rule, field and span; ``text`` keeps what the span covered."""

    revision = models.ForeignKey(Revision, on_delete=models.PROTECT, related_name="accepted_warnings")
    rule = models.CharField(max_length=40)
    field = models.CharField(max_length=20)
    start = models.PositiveIntegerField()
    end = models.PositiveIntegerField()
    text = models.TextField(blank=True)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    accepted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["revision", "field", "start", "rule"]
        constraints = [
            models.UniqueConstraint(
                fields=["revision", "rule", "field", "start", "end"], name="accepted_warning_once_per_span"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rule} accepted on revision {self.revision_id}"


# --- Break-glass and reminders (issue 12 §4, §5) -------------------------------------------------------------
class BreakGlassPostReview(models.Model):
    """The after-the-fact review of a break-glass publication, by an approver who is not the one who broke the glass.

    ``break_glass_by`` copies the break-glass review's reviewer; a composite foreign key (migration 0010) makes sure
    the copy is true, and a CHECK refuses a post-review by that same user. Until one exists, the publication stays
    red on the dashboard. Only workflow.py writes it.
    """

    review = models.OneToOneField(Review, on_delete=models.PROTECT, related_name="post_review")
    break_glass_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    comment = models.TextField(blank=True, max_length=COMMENT_MAX_LENGTH)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=~Q(reviewer=F("break_glass_by")), name="break_glass_post_review_by_someone_else"
            ),
        ]

    def __str__(self) -> str:
        return f"Post-review of break-glass review {self.review_id}"


class UpdateReminder(models.Model):
    """An overdue update was told (authors and approvers emailed): at most one per incident and due time."""

    incident = models.ForeignKey(Incident, on_delete=models.PROTECT, related_name="update_reminders")
    due_at = models.DateTimeField()
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-due_at"]
        constraints = [models.UniqueConstraint(fields=["incident", "due_at"], name="update_reminder_once_per_due")]

    def __str__(self) -> str:
        return f"Update of incident {self.incident_id} overdue since {self.due_at:%Y-%m-%d %H:%M}"


class ReviewEscalation(models.Model):
    """A revision that waited too long for review was escalated to every approver of its team: once per revision."""

    revision = models.OneToOneField(Revision, on_delete=models.PROTECT, related_name="escalation")
    created_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"Escalation of revision {self.revision_id}"


# --- One incident, several services (issue 12, fan-out) ---------------------------------------------------
class IncidentGroup(models.Model):
    """The one local incident an outage is: one IsDown incident per affected service (``incidents``), published,
    updated and resolved together. Created when a draft naming several services is approved, or when a service is
    added to an incident. Sync keeps each member as it is: IsDown knows nothing of the group."""

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="incident_groups")
    title = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.title} (group #{self.pk})"


# --- Drafts from alerts (issue 12 §6) ----------------------------------------------------------------------------
# Only alerts.py writes these rows.
ALERT_LABEL_NAME_MAX_LENGTH = 100
ALERT_LABEL_VALUE_MAX_LENGTH = 200
ALERT_FINGERPRINT_MAX_LENGTH = 200


class AlertWebhook(models.Model):
    """A team's alert webhook: the SHA-256 of its bearer token (the token itself is shown once, never stored) and
    the team's system author, an inactive user without a membership or a usable password that alert drafts are
    written by (it can never sign in, draft by hand, or review)."""

    team = models.OneToOneField(Team, on_delete=models.PROTECT, related_name="alert_webhook")
    token_sha256 = models.CharField(max_length=64, blank=True)
    system_user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    rotated_at = models.DateTimeField(null=True, blank=True)
    rotated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    def __str__(self) -> str:
        return f"Alert webhook of {self.team}"


class AlertRoute(models.Model):
    """A team's mapping from one alert label to one of its services: ``service="api"`` → API."""

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="alert_routes")
    label_name = models.CharField(max_length=ALERT_LABEL_NAME_MAX_LENGTH)
    label_value = models.CharField(max_length=ALERT_LABEL_VALUE_MAX_LENGTH)
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="alert_routes")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["label_name", "label_value", "id"]
        constraints = [
            models.UniqueConstraint(fields=["team", "label_name", "label_value"], name="alert_route_unique_label"),
        ]

    def __str__(self) -> str:
        return f'{self.label_name}="{self.label_value}" → {self.service.name}'


class AlertKind(models.TextChoices):
    FIRING = "firing", "Firing"
    RESOLVED = "resolved", "Resolved"


class AlertDelivery(models.Model):
    """One alert (firing, or resolved) a team's webhook acted on. The unique (team, fingerprint, kind) is the
    dedupe: a second delivery of the same alert, even at the same moment, finds the row and makes nothing."""

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="alert_deliveries")
    fingerprint = models.CharField(max_length=ALERT_FINGERPRINT_MAX_LENGTH + 40)
    kind = models.CharField(max_length=10, choices=AlertKind.choices)
    source = models.CharField(max_length=100)
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="+")
    draft = models.ForeignKey(Draft, on_delete=models.PROTECT, null=True, blank=True, related_name="alert_deliveries")
    # Why no draft was made (a resolve for an incident that is not on IsDown yet, …); "" when one was.
    note = models.CharField(max_length=300, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["team", "fingerprint", "kind"], name="alert_delivery_once"),
            models.CheckConstraint(condition=Q(kind__in=AlertKind.values), name="alert_delivery_kind_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} alert {self.fingerprint[:40]} ({self.source})"


class AlertRateWindow(models.Model):
    """A fixed-window request counter per team and bucket (``accepted``: requests with the right token;
    ``refused``: the rest), advanced by one atomic INSERT … ON CONFLICT … RETURNING (alerts.count_request)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    bucket = models.CharField(max_length=10)
    window_start = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "bucket"], name="alert_rate_window_one_per_bucket")]

    def __str__(self) -> str:
        return f"{self.count} {self.bucket} alert request(s) of team {self.team_id} since {self.window_start}"


# --- Audit checkpoints (issue 13: signed heads of the chain) -----------------------------------------------
class AuditCheckpoint(models.Model):
    """The chain's head ``(seq, hash)`` at ``signed_at``, signed with the Ed25519 key kept outside the database.
    Written only by ``checkpoints.sign_head``; insert-only like the audit table (triggers and grants, migration
    0010), and also appended to the sink file (``AUDIT_CHECKPOINT_SINK``). ``signature`` is over
    ``isdown_admin.signing.checkpoint_message``."""

    seq = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    signed_at = models.DateTimeField()
    reason = models.CharField(max_length=20)
    public_key = models.CharField(max_length=64)
    signature = models.CharField(max_length=100)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["seq"], name="audit_checkpoint_seq")]

    def __str__(self) -> str:
        return f"checkpoint #{self.pk} at seq {self.seq}"


# --- Audit exports built in the background (issue 13: a million rows outlive a web request) ------------------
class AuditExportState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Being built"
    DONE = "done", "Ready"
    FAILED = "failed", "Failed"


class AuditExport(models.Model):
    """An export too big to stream inside a request: a worker writes the file (``exports.build``), its requester
    downloads it. The events are those the filters select for the requester, up to ``up_to_seq`` (the head signed
    when it was asked for)."""

    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    format = models.CharField(max_length=5)
    filters = models.JSONField(default=dict, blank=True)
    described = models.CharField(max_length=500, blank=True)
    up_to_seq = models.BigIntegerField()
    state = models.CharField(max_length=10, choices=AuditExportState.choices, default=AuditExportState.QUEUED)
    rows = models.BigIntegerField(null=True, blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"audit export #{self.pk} ({self.format}, {self.state})"

    @property
    def file_name(self) -> str:
        return f"audit-export-{self.pk}.{self.format}"

    @property
    def pending(self) -> bool:
        return self.state in (AuditExportState.QUEUED, AuditExportState.RUNNING)


# --- Audit chain verification as a background job (issue 13: a million events outlive a web request) ----------
class AuditVerification(models.Model):
    """One run of the chain's verification by a worker (``verifications.run``): its progress while it runs, its
    verdict after (also recorded as an ``audit.verified`` event)."""

    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=10, choices=AuditExportState.choices, default=AuditExportState.QUEUED)
    total = models.BigIntegerField(default=0)
    checked = models.BigIntegerField(default=0)
    ok = models.BooleanField(null=True, blank=True)
    broken_seq = models.BigIntegerField(null=True, blank=True)
    message = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"audit verification #{self.pk} ({self.state})"

    @property
    def pending(self) -> bool:
        return self.state in (AuditExportState.QUEUED, AuditExportState.RUNNING)

    @property
    def percent(self) -> int:
        return min(100, self.checked * 100 // self.total) if self.total else 0


# --- Audit entries waiting to be sealed (issue 13: appends that do not serialise the app) -------------------------
class CurrentTransactionId(models.Func):
    """The inserting transaction's 64-bit id (``pg_current_xact_id()``, xid8) as a bigint: the sealer's order."""

    template = "(pg_current_xact_id()::text::bigint)"
    output_field = models.BigIntegerField()


class AuditEntry(models.Model):
    """One event as ``audit.record`` writes it inside the caller's transaction: no seq, no hash, no lock. The
    sealer (``audit.seal``) chains committed entries into AuditEvent (version 2) in (xid, id) order. Insert-only
    (triggers in migration 0018; the app's role may only SELECT and INSERT), like AuditEvent."""

    xid = models.BigIntegerField(db_default=CurrentTransactionId())
    created_at = models.DateTimeField()
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_label = models.CharField(max_length=150)
    team_id = models.BigIntegerField(null=True, blank=True)
    team_label = models.CharField(max_length=100, blank=True)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=40, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=300, blank=True)
    summary = models.CharField(max_length=500)
    changes = models.JSONField(default=dict, blank=True)
    context = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=["xid", "id"], name="audit_entry_xid_id")]

    def __str__(self) -> str:
        return f"entry {self.pk} {self.action}: {self.summary}"
