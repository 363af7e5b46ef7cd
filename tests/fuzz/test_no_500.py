"""No input is a 500: every URL pattern, every persona (anonymous, each role, another team, staff), any method,
the page's own form fields with valid and hostile values, hostile headers and bodies.

The URL patterns come from the resolver (one test each; the admin's, Django's own views, share one), so a new page
is fuzzed as soon as it is routed, and its forms as soon as a page renders them: their fields, kinds, bounds and
lengths are read from the HTML every persona is served. Each generated request runs in a savepoint that is rolled
back, so every input meets the same world: a logout, a deleted object or a queued fault does not leak into the
next input. A 500 is a response (``raise_request_exception=False``), an ERROR logged by ``django.request``, or an
exception that escapes Django altogether (what a server answers with a bare 500).
"""

from __future__ import annotations

import traceback
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.db import transaction
from django.urls import Resolver404, resolve
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from .conftest import FUZZ_EXAMPLES, PERSONAS, client_as, known_ids, record_response
from .targets import (
    PARAM_RE,
    Field,
    Form,
    Target,
    all_targets,
    bodies,
    field_pairs,
    forms_in,
    headers,
    paths,
    urlencoded,
)

TARGETS = all_targets()
METHODS = ["GET", "GET", "POST", "POST", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"]
API_METHODS = ["GET", "POST", "PATCH", "DELETE", "PUT", "HEAD", "OPTIONS"]
ADMIN_SHARE = 20
ADMIN_PERSONAS = ["staff", "staff", "staff", "plain_staff", "anonymous", "responder"]
FUZZ = hypothesis_settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    # The world is built once per URL pattern and each input is rolled back: fixtures are meant to be shared.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

Catalogue = dict[str, dict[str, dict[str, Field]]]  # route -> method -> name -> the field as pages render it
# route -> the (persona, page route) pairs whose page renders a form for it; filled by the first full crawl.
_SOURCES: dict[str, set[tuple[str, str]]] | None = None


def _groups() -> dict[str, list[Target]]:
    """One test per URL pattern, except the admin's (86 patterns of Django's own views over our models): one test
    draws among them, so the world is built once for all of them."""
    groups: dict[str, list[Target]] = {}
    for target in TARGETS:
        groups.setdefault("admin" if target.name.startswith("admin:") else target.test_id, []).append(target)
    return groups


GROUPS = _groups()


# --- Reading the forms off the pages --------------------------------------------------------------------------
def _filled_paths(target: Target, known: dict[str, list[str]]) -> list[str]:
    """``target``'s path with each known id in its parameter (the first only for the admin's many pages); none if
    it has a parameter we cannot fill."""
    paths = [""]
    for level in target.levels:
        text = str(level)
        if text.startswith("^") or "(?P<" in text:
            return []
        for match in PARAM_RE.finditer(text):
            values = known.get(match["name"]) or known.get("*") or []
            if target.name.startswith("admin:"):
                values = values[:1]
            paths = [path + text[: match.start()] + value for path in paths for value in values]
            text = text[match.end() :]
        paths = [path + text for path in paths]
    return ["/" + path for path in paths]


def _rolled_back_get(sessions, persona: str, path: str) -> str | None:
    with transaction.atomic():
        response = client_as(sessions, persona).get(path)
        html = None
        if response.status_code == 200 and not response.streaming and "html" in response.get("Content-Type", ""):
            html = response.content.decode("utf-8", "replace")
        transaction.set_rollback(True)
    return html


def crawl(world, sessions, pages: set[tuple[str, str]]) -> tuple[Catalogue, dict[str, set[tuple[str, str]]]]:
    """GET each ``(persona, route)`` page (once per known id) and collect its forms by the route they are sent to.
    Returns them, and for each route the pages that render a form for it."""
    by_route = {target.route: target for target in TARGETS}
    catalogue: Catalogue = {}
    sources: dict[str, set[tuple[str, str]]] = {}
    for persona, route in sorted(pages):
        page = by_route.get(route)
        for path in _filled_paths(page, known_ids(world, page)) if page else []:
            html = _rolled_back_get(sessions, persona, path)
            for form in forms_in(html, path) if html else []:
                _file(catalogue, sources, form, persona, route)
    return catalogue, sources


def _file(catalogue: Catalogue, sources, form: Form, persona: str, page_route: str) -> None:
    try:
        route = resolve(urlsplit(form.action).path).route
    except Resolver404:
        return
    fields = catalogue.setdefault(route, {}).setdefault(form.method, {})
    for name, entry in form.fields.items():
        if name != "csrfmiddlewaretoken":
            fields.setdefault(name, Field()).merge(entry)
    sources.setdefault(route, set()).add((persona, page_route))


def full_crawl(world, sessions) -> tuple[Catalogue, dict[str, set[tuple[str, str]]]]:
    return crawl(world, sessions, {(persona, page.route) for persona in PERSONAS for page in TARGETS})


@pytest.fixture
def catalogue(group: str, world, sessions) -> Catalogue:
    """The fields of the forms sent to the group's routes, as the pages render them in this test's world. The
    first test reads every page as every persona; later ones only the pages found to hold their forms."""
    global _SOURCES
    if _SOURCES is None:
        found, _SOURCES = full_crawl(world, sessions)
        return found
    pages = set().union(*(_SOURCES.get(target.route, set()) for target in GROUPS[group]))
    return crawl(world, sessions, pages)[0]


def _shown_to(route: str) -> list[str]:
    """The personas whose pages render a form for ``route``: they are the ones whose input reaches the form."""
    return sorted({persona for persona, _page in (_SOURCES or {}).get(route, set())})


# --- The property ---------------------------------------------------------------------------------------------
def _read(response) -> None:
    if response.streaming:
        # An export can fail while streaming, after its 200: read it all. The test client closes it at the end
        # (never close() it here: that would close the database connection in the middle of the test).
        for _chunk in response.streaming_content:
            pass


@pytest.mark.parametrize("group", list(GROUPS))
def test_no_input_is_a_500(group: str, world, sessions, catalogue, request_errors):
    targets = GROUPS[group]
    api_key = settings.SANDBOX_API_KEY if settings.SANDBOX_ENABLED else ""
    # The admin's pages are Django's own: they get ADMIN_SHARE patterns' worth of inputs, mostly as staff (anyone
    # else is sent to its login page).
    admin = group == "admin"
    personas = st.sampled_from(ADMIN_PERSONAS if admin else PERSONAS)

    @hypothesis_settings(FUZZ, max_examples=FUZZ_EXAMPLES * (ADMIN_SHARE if admin else len(targets)))
    @given(data=st.data())
    def one_request(data) -> None:
        target = data.draw(st.sampled_from(targets), label="target")
        forms = catalogue.get(target.route, {})
        # Half the time someone the form is shown to, with the form's method; otherwise anyone, any method.
        shown_to = _shown_to(target.route)
        persona = data.draw(st.sampled_from(shown_to) | personas if shown_to else personas, label="persona")
        path = data.draw(paths(target, known_ids(world, target)), label="path")
        any_method = st.sampled_from(API_METHODS if target.is_sandbox_api else METHODS)
        method = data.draw(st.sampled_from(sorted(forms)) | any_method if forms else any_method, label="method")
        query = data.draw(field_pairs(forms.get("GET", {})) if method == "GET" else st.just([]), label="query")
        if method in ("GET", "HEAD", "OPTIONS") and data.draw(st.integers(0, 9)) > 0:
            body, content_type = b"", ""
        else:
            body, content_type = data.draw(
                bodies(forms.get("POST", {}), json_first=target.is_sandbox_api), label="body"
            )
        extra = data.draw(headers(api_key, sorted(forms.get("POST", {}))), label="headers")
        url = path + ("?" + urlencoded(query).decode() if query else "")

        request_errors.records.clear()
        escaped = ""
        with transaction.atomic():
            try:
                response = client_as(sessions, persona).generic(
                    method, url, data=body, content_type=content_type, **extra
                )
                status = response.status_code
                if not target.name.startswith("sandbox:"):  # the sandbox's dropped connection breaks on purpose
                    _read(response)
            except Exception:  # out of Django's hands (say, while it builds the request): the server answers 500
                status, escaped = 500, traceback.format_exc()
            transaction.set_rollback(True)
        record_response(status)

        logged = [request_errors.describe(record) for record in request_errors.records]
        assert status != 500 and not logged, (
            f"{persona} {method} {url[:300]!r} ({content_type!r}, {len(body)} bytes) -> {status}\n"
            + ("\n".join(logged) + escaped)[-4000:]
        )

    one_request()


# --- The fuzz knows what it aims at --------------------------------------------------------------------------
FORMS_EXPECTED = {
    ("accounts/login/", "POST"): {"username", "password"},
    ("accounts/password/", "POST"): {"old_password", "new_password1", "new_password2"},
    ("drafts/new/", "POST"): {"service", "title", "severity", "description", "stage", "action"},
    ("drafts/<int:pk>/", "POST"): {"title", "version", "action"},
    ("incidents/<int:pk>/update/", "POST"): {"title", "severity", "description", "stage"},
    ("drafts/<int:pk>/review/", "POST"): {"decision", "revision", "sha256", "comment"},
    ("audit/", "GET"): {"team", "actor", "action", "since", "until"},
    ("incidents/", "GET"): {"q", "severity", "stage", "status"},
    ("publications/<int:pk>/retry/", "POST"): {"state"},
    ("publications/<int:pk>/mark-published/", "POST"): {"remote_id"},
    ("publications/<int:pk>/abandon/", "POST"): {"reason"},
    ("sandbox/", "POST"): {"kind", "status", "retry_after", "latency_ms", "hang_seconds", "count", "method", "clear"},
    ("admin/incidents/team/add/", "POST"): {"name"},
}


def test_the_fuzz_reads_the_fields_of_every_form_off_its_page(world, sessions):
    found, _sources = full_crawl(world, sessions)
    missing = {
        key: sorted(fields - set(found.get(key[0], {}).get(key[1], {})))
        for key, fields in FORMS_EXPECTED.items()
        if not fields <= set(found.get(key[0], {}).get(key[1], {}))
    }
    assert not missing


def test_every_url_pattern_is_a_target():
    # A pattern the walk missed (say, in a nested include) would never be fuzzed.
    from django.urls import get_resolver

    def count(patterns) -> int:
        return sum(count(p.url_patterns) if hasattr(p, "url_patterns") else 1 for p in patterns)

    assert len(TARGETS) == count(get_resolver().url_patterns)
    assert len({target.route for target in TARGETS}) == len(TARGETS)
    assert sum(len(targets) for targets in GROUPS.values()) == len(TARGETS)
