"""The shared reads in selectors.py stay inside the user's teams, whatever the filters ask for."""

from __future__ import annotations

from incidents import audit, forms, selectors, workflow
from incidents.models import DraftKind, Severity

from .factories import IncidentFactory

FIELDS = {"title": "API errors", "severity": "minor", "description": "Looking into it.", "stage": "investigating"}


def test_incident_filters_never_reach_another_teams_incidents(responder, api_service, pipeline_service):
    ours = IncidentFactory(service=api_service, title="Checkout slow", severity=Severity.MAJOR)
    IncidentFactory(service=pipeline_service, title="Checkout slow too", severity=Severity.MAJOR)
    assert list(selectors.incidents_matching(responder, {})) == [ours]
    assert list(selectors.incidents_matching(responder, {"q": "checkout", "severity": "major"})) == [ours]
    # Naming the other team's service is no way in.
    assert list(selectors.incidents_matching(responder, {"service": pipeline_service})) == []


def test_incident_filters_narrow_by_status(responder, api_service):
    open_one = IncidentFactory(service=api_service)
    resolved = IncidentFactory(service=api_service, resolved=True)
    assert list(selectors.incidents_matching(responder, {"status": "open"})) == [open_one]
    assert list(selectors.incidents_matching(responder, {"status": "resolved"})) == [resolved]


def test_awaiting_review_lists_only_my_teams_drafts_that_i_never_edited(
    responder, approver, outsider, api_service, pipeline_service
):
    theirs = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    workflow.submit(draft_id=theirs.pk, user=responder)
    mine = workflow.create(user=approver, service=api_service, kind=DraftKind.OPEN, fields=FIELDS)
    workflow.submit(draft_id=mine.pk, user=approver)
    other_team = workflow.create(user=outsider, service=pipeline_service, kind=DraftKind.OPEN, fields=FIELDS)
    workflow.submit(draft_id=other_team.pk, user=outsider)
    assert list(selectors.awaiting_review(approver)) == [theirs]
    assert list(selectors.awaiting_review(responder)) == []  # a responder reviews nothing


def test_history_is_scoped_to_the_readers_teams(auditor, platform, data_team):
    ours = audit.record("draft.saved", team=platform, target_type="draft", target_id="7", summary="ours")
    audit.record("draft.saved", team=data_team, target_type="draft", target_id="7", summary="theirs")
    history = selectors.history_for(auditor, target_type="draft", target_ids=[7])
    assert history.visible
    assert [event.seq for event in history.events] == [ours.seq]


def test_audit_scope_teams_are_the_teams_i_audit(auditor, staff, platform, data_team):
    assert selectors.audit_scope_teams(auditor, "") == [platform]
    assert selectors.audit_scope_teams(auditor, str(data_team.pk)) == []
    # Staff also act on the team-less events, which only they may read.
    assert selectors.audit_scope_teams(staff, "") == [None]
    assert selectors.audit_scope_teams(staff, forms.NO_TEAM) == [None]
