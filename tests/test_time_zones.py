"""Times carry their zone; each user chooses theirs; the audit log's filters read typed times in it."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from incidents import audit, preferences
from incidents.models import AuditEvent, Incident, UserPreference

pytestmark = pytest.mark.django_db


def test_times_are_shown_with_their_zone_by_default(approver, api_service, as_user):
    incident = Incident.objects.create(
        service=api_service,
        remote_id="1",
        title="Slow",
        resolved=True,
        resolved_at=datetime(2026, 11, 27, 14, 3, tzinfo=UTC),
    )
    html = as_user(approver).get(reverse("incidents:incident_detail", args=[incident.pk])).content.decode()
    assert "Resolved 2026-11-27 14:03 UTC" in html


def test_a_user_chooses_a_zone_on_the_account_page_and_sees_times_in_it(approver, api_service, as_user):
    client = as_user(approver)
    assert client.get(reverse("incidents:account")).status_code == 200
    response = client.post(reverse("incidents:account"), {"time_zone": "America/New_York"})
    assert response.status_code == 302
    assert UserPreference.objects.get(user=approver).time_zone == "America/New_York"
    event = AuditEvent.objects.filter(action="user.time_zone_changed").get()
    assert event.changes == {"time_zone": [None, "America/New_York"]}

    incident = Incident.objects.create(
        service=api_service,
        remote_id="2",
        title="Slow",
        resolved=True,
        resolved_at=datetime(2026, 11, 27, 14, 3, tzinfo=UTC),
    )
    html = client.get(reverse("incidents:incident_detail", args=[incident.pk])).content.decode()
    assert "Resolved 2026-11-27 09:03 EST" in html


def test_an_unknown_zone_is_refused(approver, as_user):
    response = as_user(approver).post(reverse("incidents:account"), {"time_zone": "Mars/Olympus"})
    assert response.status_code == 422
    assert not UserPreference.objects.filter(user=approver, time_zone="Mars/Olympus").exists()


def test_audit_filters_read_typed_times_in_the_users_zone(approver, platform, as_user):
    preferences.set_time_zone(user=approver, time_zone="America/New_York")
    audit.record("draft.created", summary="the recent one", team=platform)
    new_york_now = timezone.now().astimezone(zoneinfo.ZoneInfo("America/New_York"))
    client = as_user(approver)

    def listed(until: datetime) -> bool:
        response = client.get(reverse("incidents:audit_log"), {"until": until.strftime("%Y-%m-%dT%H:%M")})
        return "the recent one" in response.content.decode()

    # Read as UTC, New York's wall clock would be hours in the past and list nothing.
    assert listed(new_york_now + timedelta(minutes=1))
    assert not listed(new_york_now - timedelta(minutes=2))
