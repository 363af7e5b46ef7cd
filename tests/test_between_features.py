"""Where issue 12's features meet (found in review after the merge): drafts from alerts and the review's email,
the order the held-publication email counts in, break-glass and scheduling on a grouped incident, reminders of a
grouped incident, templates and the lint on add/remove-service drafts. Each test failed before its fix."""

from __future__ import annotations

import pytest

from incidents import alerts, workflow
from incidents.models import DraftKind, Notification

pytestmark = pytest.mark.django_db

FIELDS = {"title": "API errors", "severity": "major", "description": "Elevated 5xx on /v1.", "stage": "investigating"}


def alert_draft(team, approver, service):
    """A draft written by the team's alert webhook (its system author), never submitted."""
    alerts.rotate_token(team=team, user=approver)
    alerts.add_route(team=team, user=approver, label_name="service", label_value="api", service=service)
    alert = alerts.Alert(
        source="uptime-checker",
        status="firing",
        fingerprint="api-down-1",
        key="api-down-1",
        labels={"service": "api"},
        title="API is down",
        description="Every check fails.",
    )
    [outcome] = alerts.receive(team=team, alerts=[alert])
    return workflow.Draft.objects.get(pk=outcome["draft"])


# --- 1. The review of an alert's draft is told to whoever submitted it ----------------------------------------------
@pytest.mark.parametrize("decision", ["approve", "request_changes", "reject"])
def test_the_review_of_an_alert_draft_is_emailed_to_its_submitter(
    platform, api_service, responder, approver, no_broker, decision
):
    draft = alert_draft(platform, approver, api_service)
    assert not draft.author.is_active and not draft.author.email  # the system author: nobody reads its mail
    revision = workflow.submit(draft_id=draft.pk, user=responder)  # submitted unedited: the responder adopted it
    workflow.decide(
        draft_id=draft.pk,
        revision_id=revision.pk,
        reviewer=approver,
        decision=decision,
        comment="" if decision == "approve" else "Say which region.",
        sha256=revision.sha256,
    )
    told = Notification.objects.get(kind="reviewed")
    assert told.recipients == [responder.email]
    assert f"draft #{draft.pk}" in told.body
