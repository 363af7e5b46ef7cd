"""The public-text lint's rules, one by one (what each must catch and what it must leave alone), the highlighting
(always escaped), and that no text ever crashes it or takes long. Pure: no database."""

from __future__ import annotations

import html
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incidents.public_text_lint import RULES, RULES_BY_ID, highlight, lint, merged_spans


def spans(rule: str, text: str, *, field: str = "description", stage: str = "investigating") -> list[str]:
    """What ``rule`` flags in ``text`` (in ``field``), as the flagged strings."""
    fields = {"title": "", "description": "", "stage": stage, field: text}
    return [f.text for f in lint(fields) if f.rule == rule and f.field == field]


# (rule, text, what it flags): each rule's positives.
POSITIVES = [
    ("internal-host", "Failover to db-01.prod.internal done", "db-01.prod.internal"),
    ("internal-host", "see grafana.corp:3000 for details", "grafana.corp:3000"),
    ("internal-host", "printer.local is down", "printer.local"),
    ("internal-host", "api.svc.cluster.local answered 503", "api.svc.cluster.local"),
    ("internal-host", "curl localhost:8080 fails", "localhost:8080"),
    ("internal-url", "Dashboard: http://grafana/d/abc", "http://grafana/d/abc"),
    ("internal-url", "Job https://jenkins:8443/job/deploy failed", "https://jenkins:8443/job/deploy"),
    ("private-ip", "Primary at 10.0.3.17 stopped", "10.0.3.17"),
    ("private-ip", "from 172.20.1.1.", "172.20.1.1"),
    ("private-ip", "LB 192.168.1.254 flapped", "192.168.1.254"),
    ("private-ip", "bound to 127.0.0.1", "127.0.0.1"),
    ("private-ip", "link-local 169.254.169.254 metadata", "169.254.169.254"),
    ("private-ip", "IPv6 fd12:3456:789a::1 unreachable", "fd12:3456:789a::1"),
    ("private-ip", "loopback ::1 only", "::1"),
    ("private-ip", "link fe80::1ff:fe23:4567:890a down", "fe80::1ff:fe23:4567:890a"),
    ("email-address", "Contact jane.doe+ops@example.com for help", "jane.doe+ops@example.com"),
    ("stack-trace", "Traceback (most recent call last):\n  x", "Traceback (most recent call last)"),
    (
        "stack-trace",
        "oops\n    at com.acme.Billing.charge(Billing.java:42)\n",
        "    at com.acme.Billing.charge(Billing.java:42)",
    ),
    ("stack-trace", 'boom\n  File "/srv/app/views.py", line 12, in get', '  File "/srv/app/views.py", line 12'),
    ("exception-name", "We saw a ConnectionResetError in the gateway", "ConnectionResetError"),
    ("exception-name", "java.lang.NullPointerException thrown", "java.lang.NullPointerException"),
    ("exception-name", "a TimeoutException.", "TimeoutException"),
    ("secret", "key AKIAIOSFODNN7EXAMPLE leaked", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9", "Bearer eyJhbGciOiJIUzI1NiJ9"),
    ("secret", "use password=hunter2 to log in", "password=hunter2"),
    ("secret", "api_key: 12345abcde", "api_key: 12345abcde"),
    ("long-token", "session 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b ok", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"),
    ("long-token", "token ghp_16C7e42F292c6912E7710c838347Ae178B4a here", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
    ("placeholder", "Affected: {services} since {started_at}", "{services}"),
    ("placeholder", "Hello {custoemr_name}", "{custoemr_name}"),
    (
        "shouting",
        "WE ARE AWARE OF THE PROBLEM AND WORKING ON IT. Thanks.",
        "WE ARE AWARE OF THE PROBLEM AND WORKING ON IT.",
    ),
]

# (rule, text): each rule's negatives, text that is fine on a status page.
NEGATIVES = [
    ("internal-host", "Our status page is status.example.com and the API is api.example.io"),
    ("internal-host", "We deployed locally first; local customers are fine"),
    ("internal-url", "See https://status.example.com/incidents/1"),
    ("internal-url", "Read https://example.com"),
    ("private-ip", "Our public resolver 8.8.8.8 and 203.0.113.7 are fine"),
    ("private-ip", "Version 10.2.3 released at 12:30:45"),
    ("private-ip", "IPv6 2001:db8::1 reachable"),
    ("private-ip", "Between 11:00 and 12:30 UTC"),
    ("email-address", "Follow @isdown on social media; write to us via the support page"),
    ("stack-trace", "We traced the problem to a bad deploy at a data centre"),
    ("exception-name", "An Error occurred; errors are down; the ErrorBudget is fine"),
    ("secret", "Reset your password from the account page. Tokens were not affected."),
    ("long-token", "An extraordinarilylongwordwithoutanydigitsinsideitatallreally stays"),
    ("long-token", "Order 12345678901234567890123456789012345 confirmed"),
    ("placeholder", "JSON like {} or { spaced } is not a placeholder"),
    ("shouting", "The API and DNS and CDN are OK now"),
    ("shouting", "US EU APAC OK"),
]


@pytest.mark.parametrize(("rule", "text", "flagged"), POSITIVES, ids=[f"{p[0]}:{p[2][:20]}" for p in POSITIVES])
def test_rule_flags_what_should_not_be_public(rule, text, flagged):
    assert flagged in spans(rule, text)


@pytest.mark.parametrize(("rule", "text"), NEGATIVES, ids=[f"{n[0]}:{n[1][:20]}" for n in NEGATIVES])
def test_rule_leaves_ordinary_text_alone(rule, text):
    assert spans(rule, text) == []


def test_every_rule_has_a_positive_and_a_negative_case():
    covered_positive = {rule for rule, _, _ in POSITIVES}
    covered_negative = {rule for rule, _ in NEGATIVES}
    # The resolve rule reads the stage: it has tests of its own below.
    every = set(RULES_BY_ID) - {"resolve-text"}
    assert every <= covered_positive, every - covered_positive
    assert every <= covered_negative, every - covered_negative


def test_title_is_linted_too():
    assert spans("email-address", "Mail ops@example.com", field="title") == ["ops@example.com"]


@pytest.mark.parametrize("text", ["", "   ", "test", "Test.", "  testing  ", "TBD"])
def test_empty_or_test_resolve_text_is_flagged(text):
    findings = [f for f in lint({"description": text, "stage": "resolved"}) if f.rule == "resolve-text"]
    assert len(findings) == 1
    assert findings[0].text == text.strip()


@pytest.mark.parametrize(
    ("text", "stage"),
    [("The database failover completed; all services work again.", "resolved"), ("", "investigating"), ("test", "")],
)
def test_resolve_rule_needs_a_resolve_and_an_empty_or_test_text(text, stage):
    assert not [f for f in lint({"description": text, "stage": stage}) if f.rule == "resolve-text"]


def test_findings_carry_their_span_and_a_message():
    text = "Node 10.0.0.5 failed"
    (finding,) = [f for f in lint({"description": text}) if f.rule == "private-ip"]
    assert text[finding.start : finding.end] == "10.0.0.5"
    assert finding.message == RULES_BY_ID["private-ip"].message
    assert finding.key == ("private-ip", "description", 5, 13)


def test_every_rule_has_an_id_and_a_message():
    for rule in RULES:
        assert re.fullmatch(r"[a-z][a-z0-9-]+", rule.id)
        assert rule.message.endswith(".") and len(rule.message) > 20


# --- Highlighting -------------------------------------------------------------------------------------------------
def test_highlight_marks_spans_and_escapes_everything_else():
    text = '<script>alert("x")</script> at 10.0.0.1 & more'
    start = text.index("10.0.0.1")
    marked = highlight(text, [(start, start + 8)])
    assert marked == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; at <mark>10.0.0.1</mark> &amp; more"


def test_highlight_escapes_inside_a_mark_and_merges_overlaps():
    assert highlight("a<b>c", [(1, 3), (2, 4)]) == "a<mark>&lt;b&gt;</mark>c"
    assert merged_spans([(5, 7), (0, 2), (1, 3), (3, 4)]) == [(0, 4), (5, 7)]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(title=st.text(max_size=300), description=st.text(max_size=2000), stage=st.sampled_from(["", "resolved", "x"]))
def test_lint_never_crashes_and_its_highlight_keeps_the_text(title, description, stage):
    fields = {"title": title, "description": description, "stage": stage}
    findings = lint(fields)
    for finding in findings:
        text = fields[finding.field]
        assert 0 <= finding.start <= finding.end <= len(text)
        assert text[finding.start : finding.end] == finding.text
        assert finding.rule in RULES_BY_ID
    marked = highlight(description, [(f.start, f.end) for f in findings if f.field == "description"])
    # Only our own <mark> tags are markup: take them away and unescape, and the text is back as it was.
    assert html.unescape(marked.replace("<mark>", "").replace("</mark>", "")) == description
    assert "<" not in marked.replace("<mark>", "").replace("</mark>", "")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="aZ09.:@{}_-/ \n=+[]", max_size=500))
def test_lint_never_crashes_on_text_made_of_the_rules_own_characters(text):
    lint({"title": text[:255], "description": text, "stage": "resolved"})


@pytest.mark.parametrize(
    "unit",
    ["a", "A ", "AB ", "1.", ":", "a.", "a@", "{a", "ab:", "Bearer ", "f", "aB1", "x.internal", "at a(", "AError"],
)
def test_lint_of_a_full_description_takes_linear_time(unit):
    text = (unit * (10_000 // len(unit) + 1))[:10_000]
    started = time.perf_counter()
    lint({"title": text[:255], "description": text, "stage": "resolved"})
    assert time.perf_counter() - started < 0.5
