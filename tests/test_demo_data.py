"""The demo shows issue 12's features (README: "the demo data show each one"): a grouped incident (test_fanout),
and here a break-glass publication, a scheduled maintenance notice, a draft the public-text check warns about, an
alert's draft and templates."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from incidents import public_text_lint
from incidents.models import AlertDelivery, Draft, DraftState, DraftTemplate, PublicationState

pytestmark = pytest.mark.django_db


def test_seed_demo_shows_scheduling_the_lint_and_an_alert_draft_once(settings, capsys):
    settings.DEBUG, settings.SANDBOX_ENABLED = True, True
    call_command("seed_demo")
    out = capsys.readouterr().out
    assert "Demo: a maintenance notice scheduled for" in out

    scheduled = Draft.objects.get(title="Scheduled maintenance of the Pipeline")
    [publication] = scheduled.publications.all()
    assert (scheduled.state, publication.state) == (DraftState.APPROVED, PublicationState.SCHEDULED)
    assert publication.due_at > publication.created_at

    linted = Draft.objects.get(title="Login failures")
    assert linted.state == DraftState.IN_REVIEW
    fields = {"title": linted.title, "description": linted.description, "stage": linted.stage}
    rules = {finding.rule for finding in public_text_lint.lint(fields)}
    assert {"internal-host", "private-ip", "email-address", "exception-name"} <= rules, rules

    delivery = AlertDelivery.objects.get(fingerprint__startswith="demo-dashboard-down")
    assert delivery.draft is not None and delivery.draft.state == DraftState.DRAFT
    assert delivery.draft.service.name == "Dashboard"
    assert DraftTemplate.objects.filter(team__name="Platform").exists()

    glass = Draft.objects.get(title="Dashboard sign-in unavailable")
    review = glass.revisions.get().review
    assert (review.decision, review.reviewer.username) == ("break_glass", "approver2")
    assert not hasattr(review, "post_review")  # red on the dashboard until another approver reviews it
    assert "approver2's demo authenticator secret" in out

    drafts = Draft.objects.count()
    call_command("seed_demo")
    assert "nothing changed" in capsys.readouterr().out
    assert Draft.objects.count() == drafts
