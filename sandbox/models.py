"""The sandbox's own state: the services it knows, its incidents, the faults queued for the next requests,
and the log of every API request it received.

Nothing here is shared with the incidents app: the sandbox is "IsDown", a separate system that happens to
live in the same database. Fault state is in the database so every web process sees the same queue.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

SEVERITIES = ("minor", "major")
STAGES = ("investigating", "identified", "monitoring", "resolved")
FIRST_INCIDENT_ID = 55001  # ids look like IsDown's from the first one; set on the sequence by migration 0002


class SandboxService(models.Model):
    """A custom service the sandbox accepts writes for (registered by seed_demo or the admin)."""

    service_id = models.PositiveBigIntegerField(unique=True)
    name = models.CharField(max_length=100)
    urlname = models.SlugField(max_length=100)

    class Meta:
        ordering = ["service_id"]

    def __str__(self) -> str:
        return f"{self.name} (#{self.service_id})"


class SandboxIncident(models.Model):
    """One emulated IsDown incident. ``updates`` is the ordered list IsDown returns: [{status, description,
    created_at (ISO string)}], appended to under a row lock so concurrent PATCHes cannot lose one."""

    service = models.ForeignKey(SandboxService, on_delete=models.PROTECT, related_name="incidents")
    # The API enforces IsDown's documented limits and values; the table holds whatever "IsDown" may hold one day
    # (a longer title, a new severity), so tests can make the app meet it.
    title = models.TextField()
    description = models.TextField(blank=True)
    status = models.CharField(max_length=40, default="minor")
    resolved = models.BooleanField(default=False)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    updates = models.JSONField(default=list)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(resolved=False, resolved_at__isnull=True) | Q(resolved=True, resolved_at__isnull=False),
                name="sandbox_incident_resolved_at_iff_resolved",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.title}"

    @property
    def stage(self) -> str:
        return self.updates[-1]["status"] if self.updates else "investigating"


class FaultKind(models.TextChoices):
    STATUS = "status", "Answer with a status, without processing"
    LATENCY = "latency", "Add latency, then process normally"
    DROP = "drop", "Drop the connection, without processing"
    HANG = "hang", "Process, then hang past the client's timeout"


class SandboxFault(models.Model):
    """One queued fault, applied to the next ``remaining`` matching API requests, oldest fault first.
    Consumed under ``select_for_update`` (see sandbox.faults.take) and deleted when used up."""

    kind = models.CharField(max_length=10, choices=FaultKind.choices)
    status = models.PositiveSmallIntegerField(null=True, blank=True)
    retry_after = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    hang_seconds = models.FloatField(null=True, blank=True)
    remaining = models.PositiveIntegerField(default=1)
    method = models.CharField(max_length=10, blank=True, help_text="Only requests with this method; empty for any.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=FaultKind.values), name="sandbox_fault_kind_valid"),
            models.CheckConstraint(
                condition=~Q(kind="status") | Q(status__gte=400, status__lte=599), name="sandbox_fault_status_4xx_5xx"
            ),
            models.CheckConstraint(
                condition=~Q(kind="latency") | Q(latency_ms__isnull=False), name="sandbox_fault_latency_given"
            ),
            models.CheckConstraint(
                condition=~Q(kind="hang") | Q(hang_seconds__gt=0), name="sandbox_fault_hang_seconds_given"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.label}, next {self.remaining} request(s)" + (f" on {self.method}" if self.method else "")

    @property
    def label(self) -> str:
        """A short name for the log: "status 503 (Retry-After 5)", "latency 800 ms", "drop", "hang 30 s"."""
        if self.kind == FaultKind.STATUS:
            suffix = f" (Retry-After {self.retry_after})" if self.retry_after is not None else ""
            return f"status {self.status}{suffix}"
        if self.kind == FaultKind.LATENCY:
            return f"latency {self.latency_ms} ms"
        if self.kind == FaultKind.HANG:
            return f"hang {self.hang_seconds:g} s"
        return str(self.kind)


class SandboxRequest(models.Model):
    """One API request the sandbox received. Headers are never stored: the Authorization header is the
    only credential and must not land in the database. ``status`` is null for a dropped connection."""

    method = models.CharField(max_length=10)
    path = models.CharField(max_length=2000)
    body = models.TextField(blank=True)
    status = models.PositiveSmallIntegerField(null=True, blank=True)
    fault = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status or 'dropped'}"
