"""Every change of team, membership or service made in the admin is audited with old → new values."""

from __future__ import annotations

import pytest

from incidents.audit import verify_chain
from incidents.models import AuditEvent, Membership, Role, Service

pytestmark = pytest.mark.django_db


def test_adding_and_changing_a_service_in_the_admin_is_audited(as_user, staff, platform):
    client = as_user(staff)
    response = client.post(
        "/admin/incidents/service/add/", {"team": platform.pk, "name": "Status API", "isdown_service_id": "4242"}
    )
    assert response.status_code == 302
    service = Service.objects.get(isdown_service_id=4242)
    created = AuditEvent.objects.get(action="service.created")
    assert created.actor_label == "staff"
    assert created.team_id == platform.pk
    assert created.changes["name"] == [None, "Status API"]

    response = client.post(
        f"/admin/incidents/service/{service.pk}/change/",
        {"team": platform.pk, "name": "Public API", "isdown_service_id": "4242"},
    )
    assert response.status_code == 302
    changed = AuditEvent.objects.get(action="service.changed")
    assert changed.changes == {"name": ["Status API", "Public API"]}
    assert changed.target_label.startswith("Public API")


def test_changing_a_role_and_deleting_a_membership_are_audited(as_user, staff, responder, platform):
    membership = Membership.objects.get(user=responder)
    client = as_user(staff)
    response = client.post(
        f"/admin/incidents/membership/{membership.pk}/change/",
        {"user": responder.pk, "team": platform.pk, "role": Role.APPROVER},
    )
    assert response.status_code == 302
    assert AuditEvent.objects.get(action="membership.changed").changes == {"role": ["responder", "approver"]}

    response = client.post(f"/admin/incidents/membership/{membership.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    deleted = AuditEvent.objects.get(action="membership.deleted")
    assert deleted.changes["role"] == ["approver", None]
    # The label snapshot keeps the history readable after the row is gone.
    assert "responder" in deleted.target_label
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert verify_chain().ok


def test_memberships_edited_inline_on_a_team_are_audited(as_user, staff, platform, approver2):
    client = as_user(staff)
    response = client.post(
        f"/admin/incidents/team/{platform.pk}/change/",
        {
            "name": "Platform",
            "memberships-TOTAL_FORMS": "2",
            "memberships-INITIAL_FORMS": "1",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
            "memberships-0-id": str(Membership.objects.get(user=approver2).pk),
            "memberships-0-team": str(platform.pk),
            "memberships-0-user": str(approver2.pk),
            "memberships-0-role": Role.AUDITOR,
            "memberships-1-team": str(platform.pk),
            "memberships-1-user": "",
            "memberships-1-role": "",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    event = AuditEvent.objects.get(action="membership.changed")
    assert event.changes == {"role": ["approver", "auditor"]}
