"""The audit log's vocabulary: only registered actions are recorded, every action the code writes is registered,
and the audit filter offers them by label."""

from __future__ import annotations

import pytest
from django.contrib import admin

from incidents import audit, audit_actions, auth_audit, publishing
from incidents.admin import AuditedAdmin
from incidents.forms import AuditActionField, AuditFilterForm
from incidents.models import AuditEvent

URL = "/audit/"


def test_recording_an_unregistered_action_is_refused_and_writes_nothing(db, platform):
    with pytest.raises(audit_actions.UnregisteredAction, match=r"draft\.sumbitted"):
        audit.record("draft.sumbitted", team=platform, summary="a typo")
    assert not AuditEvent.objects.exists()


def test_a_retired_action_is_refused_but_keeps_its_label(db, platform):
    with pytest.raises(audit_actions.UnregisteredAction, match="retired"):
        audit.record("auth.login_failed", summary="old style")
    assert audit_actions.label("auth.login_failed") == "Sign-in failed"


def test_a_malformed_or_repeated_registration_is_a_bug():
    with pytest.raises(ValueError, match="dotted"):
        audit_actions.register("Draft Saved", "Draft saved")
    with pytest.raises(ValueError, match="kind"):
        audit_actions.register("drafts.saved", "Draft saved")
    with pytest.raises(ValueError, match="twice"):
        audit_actions.register("draft.saved", "Draft saved")


def test_every_action_the_publishing_protocol_and_the_auth_receivers_write_is_registered():
    written = {*publishing.TRANSITIONS.values(), *(entry[2] for entry in auth_audit.M2M_AUDITED.values())}
    assert written - set(audit_actions.ACTIONS) == set()


def test_every_model_the_admin_audits_has_its_three_actions_registered():
    audited = [model for model, model_admin in admin.site._registry.items() if isinstance(model_admin, AuditedAdmin)]
    assert audited
    for model in audited:
        for verb in ("created", "changed", "deleted"):
            audit_actions.require_recordable(f"{model._meta.model_name}.{verb}")


def test_the_filter_offers_every_action_by_its_label_grouped_by_kind(auditor, as_user):
    body = as_user(auditor).get(URL).content.decode()
    assert '<select name="action"' in body
    assert '<optgroup label="Drafts">' in body
    assert '<option value="draft.">Every draft action</option>' in body
    assert '<option value="draft.submitted">Draft submitted for review</option>' in body
    assert '<option value="auth.login_failed">Sign-in failed (no longer recorded)</option>' in body
    groups = [group for _, group in AuditActionField().choices if isinstance(group, list)]
    offered = {value for group in groups for value, _ in group if not value.endswith(".")}
    assert offered == set(audit_actions.ACTIONS)


def test_a_filter_by_action_cleans_to_the_registered_name():
    form = AuditFilterForm({"action": "review.approved"}, teams=[], include_no_team=False)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["action"] == "review.approved"
    prefix = AuditFilterForm({"action": "review.*"}, teams=[], include_no_team=False)
    assert prefix.is_valid() and prefix.cleaned_data["action"] == "review."


def test_a_filter_by_action_shows_that_action_with_its_label(auditor, platform, as_user):
    approved = audit.record("review.approved", team=platform, summary="approved it")
    audit.record("review.rejected", team=platform, summary="rejected it")
    response = as_user(auditor).get(URL, {"action": "review.approved"})
    assert [event.seq for event in response.context["page"].events] == [approved.seq]
    assert "Revision approved <code>review.approved</code>" in response.content.decode()


def test_events_of_retired_and_unregistered_actions_still_display_and_filter(auditor, platform, as_user, monkeypatch):
    with monkeypatch.context() as patch:
        # As if written while these were current actions.
        patch.setattr(audit_actions, "require_recordable", lambda name: None)
        retired = audit.record("auth.login_failed", team=platform, summary="failed once")
        unknown = audit.record("publication.attempt", team=platform, summary="tried once")
    client = as_user(auditor)
    body = client.get(URL).content.decode()
    assert "Sign-in failed <code>auth.login_failed</code>" in body
    assert "<code>publication.attempt</code>" in body
    assert [e.seq for e in client.get(URL, {"action": "auth.login_failed"}).context["page"].events] == [retired.seq]
    assert [e.seq for e in client.get(URL, {"action": "publication."}).context["page"].events] == [unknown.seq]
