"""Drafts from alerts (issue 12 §6): the team's webhook over real HTTP (Django's test client), its token, its rate
limit in Postgres, both payload formats, the dedupe (also under two concurrent deliveries), resolves, the system
author under the four-eyes rules, and the settings page."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, connections
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from incidents import alerts, draft_templates, workflow
from incidents.models import (
    AlertDelivery,
    AlertRateWindow,
    AlertRoute,
    AlertWebhook,
    AuditEvent,
    Draft,
    DraftKind,
    DraftState,
    Notification,
    Publication,
    PublicationState,
    Revision,
    TemplateKind,
)
from tests.factories import IncidentFactory

FIRING_AM = {
    "version": "4",
    "groupKey": '{}:{alertname="HighErrorRate"}',
    "status": "firing",
    "receiver": "isdown",
    "groupLabels": {"alertname": "HighErrorRate"},
    "commonLabels": {"alertname": "HighErrorRate", "service": "api"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager.internal:9093",
    "truncatedAlerts": 0,
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "HighErrorRate", "service": "api", "severity": "critical"},
            "annotations": {"summary": "API error rate above 5%", "description": "5xx ratio is 7% on api-1."},
            "startsAt": "2026-11-27T10:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.internal/graph",
            "fingerprint": "a1b2c3d4e5f60718",
        }
    ],
}
GENERIC = {
    "source": "uptime-checker",
    "status": "firing",
    "fingerprint": "dashboard-down-1",
    "labels": {"service": "dashboard"},
    "title": "Dashboard is not loading",
    "description": "The dashboard answers 502 for every check.",
}


def resolved(payload: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(json.dumps(payload))
    body["status"] = "resolved"
    for alert in body.get("alerts", []):
        alert["status"] = "resolved"
    return body


@pytest.fixture
def token(platform, approver) -> str:
    return alerts.rotate_token(team=platform, user=approver)


@pytest.fixture
def routes(platform, approver, api_service, dashboard_service):
    alerts.add_route(team=platform, user=approver, label_name="service", label_value="api", service=api_service)
    alerts.add_route(
        team=platform, user=approver, label_name="service", label_value="dashboard", service=dashboard_service
    )


def post(team, body: Any, token: str | None, *, raw: bytes | None = None, client: Client | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    data = raw if raw is not None else json.dumps(body).encode()
    return (client or Client()).post(f"/hooks/alerts/{team.pk}/", data=data, content_type="application/json", **headers)


def actions(name: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=name).order_by("seq"))


# --- Tokens -----------------------------------------------------------------------------------------------------------
def test_a_wrong_token_is_refused_audited_and_makes_nothing(platform, token, routes):
    response = post(platform, FIRING_AM, "isdown_alerts_not-the-token")
    assert response.status_code == 401
    assert response.json() == {"error": "The token is missing or wrong."}
    assert response["WWW-Authenticate"] == "Bearer"
    assert not Draft.objects.exists()
    assert not AlertDelivery.objects.exists()
    [refused] = actions("alert.refused")
    assert refused.team_id == platform.pk and "token" in refused.summary


def test_no_token_at_all_and_a_team_without_a_webhook_are_refused(platform, token, routes, data_team):
    assert post(platform, FIRING_AM, None).status_code == 401
    assert post(data_team, FIRING_AM, token).status_code == 401  # Data has no webhook: Platform's token is no key
    assert not Draft.objects.exists()


def test_only_the_tokens_sha256_is_stored_and_it_is_compared_in_constant_time(platform, token, routes, monkeypatch):
    webhook = AlertWebhook.objects.get(team=platform)
    assert webhook.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert not AuditEvent.objects.filter(changes__icontains=token).exists()
    compared = []
    real = alerts.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(alerts.hmac, "compare_digest", spy)
    assert post(platform, FIRING_AM, token).status_code == 200
    assert compared == [(webhook.token_sha256, webhook.token_sha256)]


def test_rotating_the_token_retires_the_old_one_and_is_audited(platform, approver, token, routes):
    new = alerts.rotate_token(team=platform, user=approver)
    assert new != token and new.startswith(alerts.TOKEN_PREFIX)
    assert post(platform, FIRING_AM, token).status_code == 401
    assert post(platform, FIRING_AM, new).status_code == 200
    rotations = actions("alert.token_rotated")
    assert len(rotations) == 2 and rotations[-1].actor_label == "approver"


def test_only_an_approver_rotates_the_token(platform, responder):
    with pytest.raises(alerts.access.RoleRequired):
        alerts.rotate_token(team=platform, user=responder)
    assert not AlertWebhook.objects.exists()


# --- Rate limit -------------------------------------------------------------------------------------------------------
def test_over_the_limit_is_a_429_with_retry_after_counted_in_postgres(platform, token, routes, settings):
    settings.ALERTS_RATE_LIMIT = 1
    settings.ALERTS_RATE_WINDOW = 3600
    first = post(platform, GENERIC, token)
    second = post(platform, {**GENERIC, "fingerprint": "another"}, token)
    assert first.status_code == 200
    assert second.status_code == 429
    assert 1 <= int(second["Retry-After"]) <= 3600
    assert "at most 1 per 3600 s" in second.json()["error"]
    window = AlertRateWindow.objects.get(team=platform, bucket=alerts.ACCEPTED)
    assert window.count == 2
    assert Draft.objects.count() == 1  # the refused request made nothing
    post(platform, GENERIC, token)
    assert len(actions("alert.rate_limited")) == 1  # once per window, not once per request


def test_requests_without_the_token_do_not_use_up_the_teams_allowance(platform, token, routes, settings):
    settings.ALERTS_RATE_LIMIT = 2
    settings.ALERTS_RATE_WINDOW = 3600
    for _ in range(3):
        post(platform, GENERIC, "wrong")
    assert post(platform, GENERIC, "wrong").status_code == 429
    assert post(platform, GENERIC, token).status_code == 200
    assert len(actions("alert.refused")) == 2  # past the limit, refusals are no longer written one by one


def test_the_counter_starts_again_in_the_next_window(platform):
    from datetime import UTC, datetime

    at = datetime(2026, 1, 1, 10, 0, 30, tzinfo=UTC)
    assert alerts.count_request(team=platform, bucket="accepted", now=at).count == 1
    assert alerts.count_request(team=platform, bucket="accepted", now=at).count == 2
    later = alerts.count_request(team=platform, bucket="accepted", now=at.replace(minute=5))
    assert later.count == 1


# --- Payloads ---------------------------------------------------------------------------------------------------------
def test_an_alertmanager_firing_alert_becomes_a_draft_never_a_publication(
    platform, token, routes, api_service, responder, approver, as_user
):
    response = post(platform, FIRING_AM, token)
    assert response.status_code == 200
    [outcome] = response.json()["alerts"]
    assert outcome["outcome"] == "draft_created"
    draft = Draft.objects.get(pk=outcome["draft"])
    assert outcome["url"].endswith(f"/drafts/{draft.pk}/")
    assert (draft.kind, draft.state, draft.service) == (DraftKind.OPEN, DraftState.DRAFT, api_service)
    assert draft.title == "API error rate above 5%"
    assert draft.severity == "major" and draft.stage == "investigating"
    assert draft.description == "5xx ratio is 7% on api-1."
    assert draft.author.username == "alerts@platform" and not draft.author.is_active
    assert not Revision.objects.exists() and not Publication.objects.exists()
    delivery = AlertDelivery.objects.get()
    assert delivery.source == "Alertmanager (isdown)" and delivery.draft == draft
    email = Notification.objects.get(kind="alert_draft")
    assert set(email.recipients) == {responder.email, approver.email}
    assert f"/drafts/{draft.pk}/" in email.body
    [created] = AuditEvent.objects.filter(action="draft.created", target_id=str(draft.pk))
    assert created.actor_label == "alerts@platform" and "Alertmanager" in created.summary
    [received] = actions("alert.received")
    assert received.context["alerts"][0]["outcome"] == "draft_created"
    page = as_user(responder).get(f"/drafts/{draft.pk}/")
    assert b"alert of <strong>Alertmanager (isdown)</strong>" in page.content


def test_a_generic_alert_becomes_a_draft(platform, token, routes, dashboard_service):
    response = post(platform, GENERIC, token)
    assert response.status_code == 200
    draft = Draft.objects.get(pk=response.json()["alerts"][0]["draft"])
    assert draft.service == dashboard_service
    assert (draft.title, draft.severity) == ("Dashboard is not loading", "minor")
    assert AlertDelivery.objects.get().source == "uptime-checker"


def test_a_duplicate_delivery_makes_one_draft(platform, token, routes):
    first = post(platform, FIRING_AM, token).json()["alerts"][0]
    again = post(platform, FIRING_AM, token).json()["alerts"][0]
    assert again["outcome"] == "duplicate" and again["draft"] == first["draft"]
    assert Draft.objects.count() == 1 and AlertDelivery.objects.count() == 1


def test_the_same_fingerprint_firing_again_later_is_a_new_alert(platform, token, routes):
    post(platform, FIRING_AM, token)
    later = json.loads(json.dumps(FIRING_AM))
    later["alerts"][0]["startsAt"] = "2026-11-28T09:00:00Z"
    assert post(platform, later, token).json()["alerts"][0]["outcome"] == "draft_created"
    assert Draft.objects.count() == 2


def test_unmapped_labels_get_a_clear_answer_and_no_draft(platform, token, routes):
    body = {**GENERIC, "labels": {"service": "billing"}}
    response = post(platform, body, token)
    assert response.status_code == 200
    [outcome] = response.json()["alerts"]
    assert outcome["outcome"] == "unmapped"
    assert "No alert mapping of Platform matches" in outcome["detail"]
    assert not Draft.objects.exists() and not AlertDelivery.objects.exists()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({**FIRING_AM, "version": "3"}).encode(), 'version "4"'),
        (json.dumps({**GENERIC, "status": "open"}).encode(), '"firing" or "resolved"'),
        (json.dumps({**GENERIC, "fingerprint": ""}).encode(), '"fingerprint" is required'),
        (json.dumps({**GENERIC, "title": "a\x00b"}).encode(), "NUL"),
        (json.dumps({**GENERIC, "labels": {"service": 1}}).encode(), "must be a string"),
    ],
)
def test_bad_input_is_a_clear_400_and_is_audited(platform, token, routes, raw, message):
    response = post(platform, None, token, raw=raw)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert not Draft.objects.exists()
    assert len(actions("alert.refused")) == 1


def test_one_bad_alert_in_a_group_writes_nothing_at_all(platform, token, routes):
    body = json.loads(json.dumps(FIRING_AM))
    body["alerts"].append({"status": "firing", "labels": {"service": "api"}})  # no fingerprint
    response = post(platform, body, token)
    assert response.status_code == 400 and "alerts[1].fingerprint" in response.json()["error"]
    assert not Draft.objects.exists() and not AlertDelivery.objects.exists()


def test_a_body_over_the_limit_is_refused_unread(platform, token, routes, settings):
    settings.ALERTS_MAX_BODY_BYTES = 1024
    body = {**GENERIC, "description": "x" * 2000}
    response = post(platform, body, token)
    assert response.status_code == 413
    assert not Draft.objects.exists()


# --- Resolves ---------------------------------------------------------------------------------------------------------
def _publish(draft: Draft, remote_id: str = "7001"):
    """Stand in for the outbox: the draft's publication reached IsDown as incident ``remote_id``."""
    incident = IncidentFactory(service=draft.service, remote_id=remote_id, title=draft.title)
    Publication.objects.filter(draft=draft).update(state=PublicationState.PUBLISHED, incident=incident)
    return incident


def test_a_resolved_alert_proposes_a_resolve_draft_for_the_published_incident(
    platform, token, routes, responder, approver
):
    draft_id = post(platform, FIRING_AM, token).json()["alerts"][0]["draft"]
    revision = workflow.submit(draft_id=draft_id, user=responder)
    workflow.approve(draft_id=draft_id, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256)
    incident = _publish(Draft.objects.get(pk=draft_id))
    response = post(platform, resolved(FIRING_AM), token)
    [outcome] = response.json()["alerts"]
    assert outcome["outcome"] == "draft_created"
    resolve = Draft.objects.get(pk=outcome["draft"])
    assert (resolve.kind, resolve.state, resolve.incident, resolve.stage) == (
        DraftKind.UPDATE,
        DraftState.DRAFT,
        incident,
        "resolved",
    )
    assert resolve.description
    assert post(platform, resolved(FIRING_AM), token).json()["alerts"][0]["outcome"] == "duplicate"
    assert Draft.objects.filter(kind=DraftKind.UPDATE).count() == 1


def test_a_resolved_alert_before_its_draft_is_published_proposes_nothing(platform, token, routes):
    draft_id = post(platform, FIRING_AM, token).json()["alerts"][0]["draft"]
    [outcome] = post(platform, resolved(FIRING_AM), token).json()["alerts"]
    assert outcome["outcome"] == "not_proposed"
    assert f"draft #{draft_id} is not on IsDown" in outcome["detail"]
    assert Draft.objects.count() == 1


def test_a_resolved_alert_nobody_saw_fire_is_answered_and_ignored(platform, token, routes):
    [outcome] = post(platform, resolved(GENERIC), token).json()["alerts"]
    assert outcome["outcome"] == "unknown_alert"
    assert not Draft.objects.exists() and not AlertDelivery.objects.exists()


# --- Four eyes over the system author ---------------------------------------------------------------------------------
def test_the_system_author_cannot_sign_in_and_whoever_submits_its_draft_cannot_approve_it(
    platform, token, routes, approver, approver2
):
    draft_id = post(platform, FIRING_AM, token).json()["alerts"][0]["draft"]
    system = get_user_model().objects.get(username="alerts@platform")
    assert not system.is_active and not system.has_usable_password() and not system.memberships.exists()
    revision = workflow.submit(draft_id=draft_id, user=approver)  # submitted unedited
    assert approver.pk in revision.editors
    with pytest.raises(workflow.NotAllowed):
        workflow.approve(draft_id=draft_id, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256)
    with pytest.raises(alerts.access.RoleRequired):
        workflow.approve(draft_id=draft_id, revision_id=revision.pk, reviewer=system, sha256=revision.sha256)
    decision = workflow.approve(draft_id=draft_id, revision_id=revision.pk, reviewer=approver2, sha256=revision.sha256)
    assert decision.review.reviewer == approver2


def test_a_person_cannot_be_made_a_system_author(platform, api_service, responder):
    with pytest.raises(workflow.NotAllowed):
        workflow.create_for_system_author(
            author=responder, service=api_service, kind=DraftKind.OPEN, fields={}, incident=None, summary="x"
        )


# --- Concurrency ------------------------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_deliveries_of_one_alert_make_one_draft(platform, token, routes):
    barrier = threading.Barrier(2)
    answers: list[dict] = []
    errors: list[BaseException] = []

    def deliver():
        try:
            client = Client()
            barrier.wait(timeout=10)
            answers.append(post(platform, FIRING_AM, token, client=client).json()["alerts"][0])
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert sorted(answer["outcome"] for answer in answers) == ["draft_created", "duplicate"]
    assert Draft.objects.count() == 1 and AlertDelivery.objects.count() == 1
    assert len({answer["draft"] for answer in answers}) == 1


# --- No input is a 500 ------------------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
alert_like = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["firing", "resolved", "x", None]),
        "labels": st.dictionaries(st.sampled_from(["service", "alertname", "severity"]), st.text(max_size=20))
        | json_values,
        "fingerprint": st.text(max_size=250) | json_values,
    },
    optional={"annotations": json_values, "startsAt": st.text(max_size=50) | json_values},
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"version": st.sampled_from(["4", 4, "3"]), "alerts": st.lists(alert_like, max_size=3) | json_values}
    ),
    st.fixed_dictionaries(
        {
            "source": st.text(max_size=120) | json_values,
            "status": st.sampled_from(["firing", "resolved", "nope"]),
            "fingerprint": st.text(max_size=250) | json_values,
        },
        optional={"labels": json_values, "title": st.text() | json_values, "description": json_values},
    ),
)


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(body=bodies)
def test_no_json_body_is_a_500(platform, token, routes, settings, body):
    settings.ALERTS_RATE_LIMIT = 100_000
    client = Client(raise_request_exception=True)
    response = post(platform, body, token, client=client)
    assert response.status_code in (200, 400), response.content[:300]
    if response.status_code == 400:
        assert response.json()["error"]
    else:
        assert all(a["outcome"] for a in response.json()["alerts"])
    assert connection.in_atomic_block  # still the test's transaction: nothing escaped it


# --- The page ---------------------------------------------------------------------------------------------------------
def test_an_approver_maps_labels_to_services_audited(as_user, platform, approver, api_service):
    client = as_user(approver)
    url = f"/teams/{platform.pk}/alerts/"
    response = client.post(url, {"label_name": "service", "label_value": "api", "service": api_service.pk})
    assert response.status_code == 302
    route = AlertRoute.objects.get()
    assert (route.label_name, route.label_value, route.service) == ("service", "api", api_service)
    again = client.post(url, {"label_name": "service", "label_value": "api", "service": api_service.pk})
    assert again.status_code == 422 and b"mapped already" in again.content
    assert client.post(f"/teams/{platform.pk}/alerts/mappings/{route.pk}/delete/").status_code == 302
    assert not AlertRoute.objects.exists()
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="alert.route").order_by("seq")] == [
        "alert.route_added",
        "alert.route_removed",
    ]


def test_the_page_shows_a_new_token_once_and_never_again(as_user, platform, approver):
    client = as_user(approver)
    response = client.post(f"/teams/{platform.pk}/alerts/rotate/")
    assert response.status_code == 200
    token = response.context["new_token"]
    assert token.encode() in response.content
    assert token.encode() not in client.get(f"/teams/{platform.pk}/alerts/").content


def test_a_responder_reads_the_page_and_changes_nothing(as_user, platform, responder, api_service):
    client = as_user(responder)
    page = client.get(f"/teams/{platform.pk}/alerts/")
    assert page.status_code == 200 and b"Rotate" not in page.content and b"Create a token" not in page.content
    assert client.post(f"/teams/{platform.pk}/alerts/rotate/").status_code == 403
    posted = client.post(
        f"/teams/{platform.pk}/alerts/", {"label_name": "service", "label_value": "api", "service": api_service.pk}
    )
    assert posted.status_code == 403
    assert not AlertRoute.objects.exists()


def test_another_team_cannot_see_the_page_nor_map_its_services(
    as_user, platform, outsider, data_team, approver, pipeline_service
):
    assert as_user(outsider).get(f"/teams/{platform.pk}/alerts/").status_code == 404
    with pytest.raises(alerts.AlertError):
        alerts.add_route(team=platform, user=approver, label_name="service", label_value="p", service=pipeline_service)


# --- Templates (issue 12 §2 and §6): an alert's draft starts from the team's template --------------------------------
def test_a_firing_alert_starts_from_the_teams_new_incident_template(platform, token, routes, approver):
    draft_templates.create(
        user=approver,
        team=platform,
        fields={
            "name": "Outage",
            "kind": TemplateKind.OPEN,
            "title": "",
            "severity": "",
            "stage": "investigating",
            "description": "We are investigating an issue affecting {services} ({team}).",
        },
    )
    draft = Draft.objects.get(pk=post(platform, FIRING_AM, token).json()["alerts"][0]["draft"])
    # The template's public words, filled in; the alert's own title where the template has none.
    assert draft.description == f"We are investigating an issue affecting {draft.service.name} (Platform)."
    assert draft.title and "{" not in draft.title


def test_a_resolved_alert_starts_from_the_teams_resolve_template(platform, token, routes, responder, approver):
    draft_templates.create(
        user=approver,
        team=platform,
        fields={
            "name": "All clear",
            "kind": TemplateKind.RESOLVE,
            "title": "",
            "severity": "",
            "stage": "resolved",
            "description": "{services} is working normally again.",
        },
    )
    draft_id = post(platform, FIRING_AM, token).json()["alerts"][0]["draft"]
    revision = workflow.submit(draft_id=draft_id, user=responder)
    workflow.approve(draft_id=draft_id, revision_id=revision.pk, reviewer=approver, sha256=revision.sha256)
    incident = _publish(Draft.objects.get(pk=draft_id))
    resolve = Draft.objects.get(pk=post(platform, resolved(FIRING_AM), token).json()["alerts"][0]["draft"])
    assert (resolve.stage, resolve.description) == ("resolved", f"{incident.service.name} is working normally again.")
