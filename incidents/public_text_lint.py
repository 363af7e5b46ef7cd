"""A lint of public text: what should never reach a public status page (internal host names, private addresses,
e-mail addresses, stack traces, secrets, unresolved placeholders, an empty or "test" resolve text, SHOUTING).

Pure and fast: no Django, no database. The rules are data (``RULES``): each has an id, a message written for the
responder, the fields it reads and either a regular expression (every match is a finding) or a check function
returning spans. Add a rule by appending one. Warnings never block anything: they are shown on the draft form
while typing and on the review page, where an approver may accept one (``public_text.accept``).

Every pattern starts only where a token starts (a lookbehind) and has no ambiguous nested repetition, so a
10,000-character description is linted in linear time.
"""

from __future__ import annotations

import html
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

# The draft's fields that reach the status page as text.
TEXT_FIELDS = ("title", "description")
Span = tuple[int, int]


@dataclass(frozen=True)
class Finding:
    """One warning: which rule, in which field, where (``start``..``end`` in that field's text) and what it covers."""

    rule: str
    field: str
    start: int
    end: int
    text: str
    message: str

    @property
    def key(self) -> tuple[str, str, int, int]:
        """What an acceptance names: rule, field and span (the revision is the caller's)."""
        return (self.rule, self.field, self.start, self.end)


@dataclass(frozen=True)
class Rule:
    id: str
    message: str
    pattern: re.Pattern[str] | None = None
    # Spans of a match worth warning about, for what a pattern cannot decide alone (is this address private?).
    keep: Callable[[re.Match[str]], bool] | None = None
    # Or a check over all the fields (the resolve text depends on the stage): ``{field: [spans]}``.
    check: Callable[[Mapping[str, str]], dict[str, list[Span]]] | None = None
    fields: tuple[str, ...] = TEXT_FIELDS

    def find(self, fields: Mapping[str, str]) -> Iterable[Finding]:
        if self.check is not None:
            for name, spans in self.check(fields).items():
                text = fields.get(name) or ""
                for start, end in spans:
                    yield Finding(self.id, name, start, end, text[start:end], self.message)
            return
        assert self.pattern is not None, f"rule {self.id} has neither a pattern nor a check"
        for name in self.fields:
            text = fields.get(name) or ""
            for match in self.pattern.finditer(text):
                if match.end() > match.start() and (self.keep is None or self.keep(match)):
                    yield Finding(self.id, name, match.start(), match.end(), match.group(), self.message)


# --- Private addresses ------------------------------------------------------------------------------------------
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "10.0.0.0/8",  # RFC 1918
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598): never reachable from the public either
        "::1/128",
        "fe80::/10",
        "fc00::/7",  # unique local (ULA)
    )
)


def _is_private_address(match: re.Match[str]) -> bool:
    candidate = match.group().strip("[]")
    try:
        address = ipaddress.ip_address(candidate.split("%", 1)[0])
    except ValueError:
        return False
    return any(address.version == net.version and address in net for net in PRIVATE_NETWORKS)


def _has_letters_and_digits(match: re.Match[str]) -> bool:
    token = match.group()
    return any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


def _mostly_letters(match: re.Match[str]) -> bool:
    return sum(c.isalpha() for c in match.group()) >= 15


# --- The resolve text -------------------------------------------------------------------------------------------
TEST_WORDS = {"test", "testing", "tbd", "todo", "xxx", "asdf", "foo", "lorem ipsum", "."}


def _resolve_text(fields: Mapping[str, str]) -> dict[str, list[Span]]:
    if (fields.get("stage") or "") != "resolved":
        return {}
    description = fields.get("description") or ""
    stripped = description.strip()
    if not stripped:
        return {"description": [(0, 0)]}
    if stripped.lower().strip(".! ") in TEST_WORDS or stripped.lower() in TEST_WORDS:
        start = description.index(stripped)
        return {"description": [(start, start + len(stripped))]}
    return {}


# Where a token may start: not in the middle of a word, a host name or an address.
_START = r"(?<![\w.@%+:/-])"
INTERNAL_SUFFIXES = (
    "internal",
    "local",
    "localdomain",
    "corp",
    "lan",
    "intranet",
    "intra",
    "private",
    "home\\.arpa",
    "svc",
    "cluster",
)

RULES: list[Rule] = [
    Rule(
        "internal-host",
        "An internal host name: the public cannot reach it and should not learn your network's layout.",
        re.compile(
            _START + r"(?:[a-z0-9_-]+\.)+(?:" + "|".join(INTERNAL_SUFFIXES) + r")(?![\w.-]*[\w-])(?::\d+)?"
            r"|" + _START + r"localhost(?![\w-])(?::\d+)?",
            re.IGNORECASE,
        ),
    ),
    Rule(
        "internal-url",
        "A link to a host with no public domain: subscribers cannot open it.",
        # http://jenkins:8080/job, https://grafana/d/x: a host without a dot.
        re.compile(r"(?<![\w.-])https?://[a-z0-9_-]+(?![\w.-])(?::\d+)?(?:/[^\s<>\"']*)?", re.IGNORECASE),
    ),
    Rule(
        "private-ip",
        "A private, loopback or link-local IP address: internal detail the public should not see.",
        re.compile(
            r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)"
            r"|(?<![\w:])\[?[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?:%\w+)?\]?(?![\w:])",
            re.IGNORECASE,
        ),
        keep=_is_private_address,
    ),
    Rule(
        "email-address",
        "An e-mail address: point subscribers to your support page instead of a person's inbox.",
        re.compile(r"(?<![\w.%+-])[\w.%+-]+@(?:[a-z0-9-]+\.)+[a-z]{2,}(?![\w-])", re.IGNORECASE),
    ),
    Rule(
        "stack-trace",
        "A stack trace: it tells attackers what runs inside and tells subscribers nothing.",
        re.compile(
            r"Traceback \(most recent call last\)"
            r"|(?m:^[ \t]*at [\w$.<>]+\([^()\n]*\))"
            r"|(?m:^[ \t]*File \"[^\"\n]+\", line \d+)"
        ),
    ),
    Rule(
        "exception-name",
        "An exception name: describe the effect on users instead of the error inside the code.",
        re.compile(r"(?<![\w.])(?:[\w]+\.)*[A-Z][A-Za-z0-9]*(?:Error|Exception)(?![\w])"),
    ),
    Rule(
        "secret",
        "This looks like a secret (a key, a token or a password): never publish it, and rotate it if it leaked.",
        re.compile(
            r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"
            r"|(?<![\w])Bearer\s+[A-Za-z0-9._~+/-]{8,}=*"
            r"|(?<![\w])(?:password|passwd|pwd|secret|token|api[_-]?key)\s*[=:]\s*\S+",
            re.IGNORECASE,
        ),
    ),
    Rule(
        "long-token",
        "A long token (hex or base64): it may be a key or a session id. Remove it unless it is meant to be public.",
        re.compile(r"(?<![A-Za-z0-9+/_=-])(?:[0-9a-fA-F]{32,}|[A-Za-z0-9+/_-]{40,}={0,2})(?![A-Za-z0-9+/_=-])"),
        keep=_has_letters_and_digits,
    ),
    Rule(
        "placeholder",
        "An unfilled placeholder: replace it with the real value (or remove it).",
        re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}"),
    ),
    Rule(
        "resolve-text",
        "A resolve with no real text (empty or a test word): tell subscribers what was fixed.",
        check=_resolve_text,
        fields=("description",),
    ),
    Rule(
        "shouting",
        "Long upper-case text reads as shouting: write it in sentence case.",
        re.compile(r"(?<![\w])(?:[A-Z][A-Z0-9'\u2019]+[!?.,:;)-]*[ \t]+){3,}[A-Z][A-Z0-9'\u2019]+[!?.]*"),
        keep=_mostly_letters,
    ),
]
RULES_BY_ID = {rule.id: rule for rule in RULES}
assert len(RULES_BY_ID) == len(RULES), "two lint rules share an id"


def lint(fields: Mapping[str, str], rules: Iterable[Rule] = RULES) -> list[Finding]:
    """Every finding over the draft's fields (title, description, stage), in field then text order."""
    findings = [finding for rule in rules for finding in rule.find(fields)]
    order = {name: i for i, name in enumerate(TEXT_FIELDS)}
    return sorted(findings, key=lambda f: (order.get(f.field, len(order)), f.start, f.end, f.rule))


def merged_spans(spans: Iterable[Span]) -> list[Span]:
    """Overlapping or touching spans as one (two rules may cover the same text)."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def highlight(text: str, spans: Iterable[Span]) -> str:
    """``text`` as HTML, escaped, with ``<mark>`` around each span: safe to insert as markup whatever the text."""
    pieces, position = [], 0
    for start, end in merged_spans((max(0, s), min(len(text), e)) for s, e in spans):
        if end <= start:
            continue
        pieces.append(html.escape(text[position:start]))
        pieces.append(f"<mark>{html.escape(text[start:end])}</mark>")
        position = end
    pieces.append(html.escape(text[position:]))
    return "".join(pieces)
