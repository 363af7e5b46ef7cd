"""Concurrent actions on the same rows never deadlock (found by the chaos soak: people met 500s)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from incidents import audit, workflow
from incidents.models import Incident

pytestmark = pytest.mark.django_db(transaction=True)


def test_drafting_an_update_while_another_update_of_the_incident_is_approved_does_not_deadlock(
    api_service, responder, approver, monkeypatch
):
    """A creates an update draft: its foreign key to the incident is checked at commit, after A took the audit
    log's lock. B approves another update of the same incident: it locks the incident row, then waits for the
    audit lock. A's check must not wait for B's row lock."""
    incident = Incident.objects.create(service=api_service, remote_id="55001", title="Down")
    fields = {"title": "Down", "severity": "minor", "description": "first", "stage": "identified"}
    first = workflow.create(user=responder, service=api_service, kind="update", fields=fields, incident=incident)
    revision = workflow.submit(draft_id=first.pk, user=responder)

    a_holds_the_audit_lock, b_holds_the_incident = threading.Event(), threading.Event()
    real_record = audit.record

    def record(*args, **kwargs):
        if threading.current_thread().name == "B":
            b_holds_the_incident.set()  # approve locked the incident before its audit event
            return real_record(*args, **kwargs)
        event = real_record(*args, **kwargs)
        if threading.current_thread().name == "A":
            a_holds_the_audit_lock.set()
            b_holds_the_incident.wait(10)
        return event

    monkeypatch.setattr(audit, "record", record)
    outcomes: dict[str, str] = {}

    def run(name, action):
        try:
            action()
            outcomes[name] = "ok"
        except Exception as exc:
            outcomes[name] = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()

    a = threading.Thread(
        name="A",
        target=run,
        args=(
            "create",
            lambda: workflow.create(
                user=responder,
                service=api_service,
                kind="update",
                fields={**fields, "description": "second"},
                incident=incident,
            ),
        ),
    )
    b = threading.Thread(
        name="B",
        target=run,
        args=(
            "approve",
            lambda: (
                a_holds_the_audit_lock.wait(10),
                workflow.approve(draft_id=first.pk, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256),
            ),
        ),
    )
    a.start()
    b.start()
    a.join(30)
    b.join(30)

    assert outcomes == {"create": "ok", "approve": "ok"}
    assert incident.drafts.count() == 2 and first.publications.count() == 1
