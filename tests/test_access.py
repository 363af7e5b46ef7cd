"""Login is required everywhere but login itself and /healthz; team scoping; role checks."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from incidents import access
from incidents.models import Role

# Pages that must answer without a session. The admin's own login page is "login itself"; a team's alert webhook
# answers to its bearer token (tests/test_alerts.py), never to a session.
PUBLIC_PATHS = {"/accounts/login/", "/healthz", "/admin/login/", "/favicon.ico", "/hooks/alerts/1/"}
# The IsDown sandbox emulates a third-party API and its public status page: the bearer key guards the API.
PUBLIC_PREFIXES = ("/sandbox/api/", "/sandbox/status/")


def iter_patterns(resolver: URLResolver, prefix: str = ""):
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            yield from iter_patterns(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern)


def concrete_path(pattern: str) -> str:
    """Turn a route or regex into a URL by filling every parameter with a plausible value."""
    path = re.sub(r"<int:[^>]+>", "1", pattern)
    path = re.sub(r"<(?:str:|slug:|path:)?[^>]+>", "x", path)
    path = re.sub(r"\(\?P<[^>]+>[^)]*\)", "1", path)
    path = path.replace("^", "").replace("$", "").replace("\\Z", "").replace("\\", "")
    path = re.sub(r"[?*+]", "", path)
    return "/" + path


def all_paths() -> list[str]:
    return sorted({concrete_path(p) for p in iter_patterns(get_resolver())})


def test_the_resolver_walk_finds_the_apps_pages():
    paths = all_paths()
    assert "/" in paths
    assert "/admin/" in paths
    assert len(paths) > 20


@pytest.mark.django_db
@pytest.mark.parametrize("path", all_paths())
def test_every_url_requires_login_except_login_and_healthz(client, path):
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return
    for method in ("get", "post"):
        response = getattr(client, method)(path)
        assert response.status_code in (301, 302, 404, 405), f"{method.upper()} {path} answered {response.status_code}"
        if response.status_code == 302:
            assert "/login/" in response["Location"], f"{path} redirects to {response['Location']}"
        assert response.status_code != 200


def test_login_and_healthz_are_reachable_without_a_session(client, db):
    assert client.get("/accounts/login/").status_code == 200
    assert client.get("/healthz").status_code in (200, 503)


def test_outsider_gets_404_for_another_teams_service(as_user, outsider, api_service):
    assert as_user(outsider).get(f"/services/{api_service.pk}/").status_code == 404


def test_member_sees_own_teams_service(as_user, responder, api_service):
    response = as_user(responder).get(f"/services/{api_service.pk}/")
    assert response.status_code == 200
    assert b"API" in response.content


def test_scoped_querysets_only_hold_the_users_teams(responder, outsider, api_service, pipeline_service):
    assert list(access.services(responder)) == [api_service]
    assert list(access.services(outsider)) == [pipeline_service]
    assert access.role_in(responder, api_service.team) == Role.RESPONDER
    assert access.role_in(outsider, api_service.team) is None


def test_require_role_names_the_missing_role(auditor, platform):
    with pytest.raises(access.RoleRequired) as excinfo:
        access.require_role(auditor, platform, access.DRAFTING_ROLES, action="draft an incident")
    assert "responder or approver role in Platform" in str(excinfo.value)
