"""What the fuzz tests aim at: every URL pattern of the resolver, the forms the pages render, and the inputs.

Nothing here is written per view: the targets come from ``get_resolver()``, the fields of each form from the
HTML the pages serve (``<form>`` with its inputs, selects, textareas, named buttons and htmx values), so a new
page, form or field is fuzzed without anyone listing it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import quote, urlencode, urlsplit

from django.test.client import BOUNDARY, encode_multipart
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern, RoutePattern
from hypothesis import strategies as st

# --- Targets ------------------------------------------------------------------------------------------------
PARAM_RE = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


@dataclass(frozen=True)
class Target:
    """One URL pattern: ``route`` as Django's resolver reports it (``ResolverMatch.route``), its name, and the
    pattern of each level from the root (for building paths)."""

    route: str
    name: str
    levels: tuple[RoutePattern | RegexPattern, ...]

    @property
    def test_id(self) -> str:
        return self.name if self.name and not self.name.endswith(":None") else self.route

    @property
    def is_sandbox_api(self) -> bool:
        return self.name.startswith("sandbox:api")


def _join(route: str, more: str) -> str:
    return URLResolver._join_route(route, more) if route else more


def _walk(patterns, levels=(), route="", namespace="") -> Iterator[Target]:
    for entry in patterns:
        here = (*levels, entry.pattern)
        joined = _join(route, str(entry.pattern))
        if isinstance(entry, URLResolver):
            inner = f"{namespace}:{entry.namespace}".strip(":") if entry.namespace else namespace
            yield from _walk(entry.url_patterns, here, joined, inner)
        elif isinstance(entry, URLPattern):
            name = f"{namespace}:{entry.name}".strip(":") if namespace else str(entry.name)
            yield Target(route=joined, name=name, levels=here)


def all_targets() -> list[Target]:
    """Every URL pattern the project serves, in resolver order."""
    return list(_walk(get_resolver().url_patterns))


def by_route() -> dict[str, Target]:
    return {target.route: target for target in all_targets()}


# --- Paths ----------------------------------------------------------------------------------------------------
def _quote(text: str) -> str:
    return quote(text.encode("utf-8", errors="surrogatepass"), safe="/")


huge_numbers = st.sampled_from(["9" * 400, str(2**63), str(2**63 - 1), str(2**31), "0", "00", "1" + "0" * 30])


def _param(converter: str, known: list[str]) -> st.SearchStrategy[str]:
    choices: list[st.SearchStrategy[str]] = []
    if known:
        choices.append(st.sampled_from(known))
    if converter == "int":
        choices += [st.integers(0, 10**6).map(str), huge_numbers]
    elif converter == "path":
        choices += [st.text(min_size=1, max_size=30).map(_quote), st.just("a/b/../c")]
    else:
        choices += [st.text(min_size=1, max_size=30).filter(lambda text: "/" not in text).map(_quote), huge_numbers]
    return st.one_of(choices)


def _level(pattern: RoutePattern | RegexPattern, known: dict[str, list[str]]) -> st.SearchStrategy[str]:
    if isinstance(pattern, RegexPattern):
        regex = pattern._regex
        return st.from_regex(regex, fullmatch=True).map(_quote)
    route = str(pattern)
    parts: list[st.SearchStrategy[str]] = []
    position = 0
    for match in PARAM_RE.finditer(route):
        parts.append(st.just(route[position : match.start()]))
        parts.append(_param(match["converter"] or "str", known.get(match["name"], known.get("*", []))))
        position = match.end()
    parts.append(st.just(route[position:]))
    return st.tuples(*parts).map("".join)


def paths(target: Target, known: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """Paths that resolve to ``target`` (or nearly: a generated id may name nothing), ``known`` ids first."""
    return st.tuples(*(_level(level, known) for level in target.levels)).map(lambda parts: "/" + "".join(parts))


# --- Forms, as the pages render them ----------------------------------------------------------------------
@dataclass
class Field:
    """One field as pages render it: the values they offer, its kinds (input type or tag) and its maxlength."""

    values: set[str] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)
    maxlength: int | None = None
    bounds: set[str] = field(default_factory=set)  # the min and max a number input declares

    def merge(self, other: Field) -> None:
        self.values |= other.values
        self.kinds |= other.kinds
        self.bounds |= other.bounds
        self.maxlength = self.maxlength or other.maxlength


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, Field] = field(default_factory=dict)

    def add(self, name: str | None, value: str | None, kind: str, attributes: dict | None = None) -> None:
        if not name:
            return
        entry = self.fields.setdefault(name, Field())
        entry.values.add(value or "")
        entry.kinds.add(kind)
        attributes = attributes or {}
        if (maxlength := attributes.get("maxlength") or "").isdigit():
            entry.maxlength = int(maxlength)
        entry.bounds |= {str(attributes[key]) for key in ("min", "max") if attributes.get(key)}


class FormParser(HTMLParser):
    """Collects every <form>: its action, method and fields with the values the page offers. Elements with
    ``hx-post`` / ``hx-get`` count as forms of their own (with their form's fields and their ``hx-vals``)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "form":
            self._form = Form(action=attributes.get("action") or "", method=(attributes.get("method") or "get").upper())
            self.forms.append(self._form)
        for verb in ("get", "post"):
            if url := attributes.get(f"hx-{verb}"):
                extra = Form(action=url, method=verb.upper())
                if self._form is not None:
                    extra.fields = self._form.fields  # shared: the form's fields go along
                self.forms.append(extra)
                try:
                    values = json.loads(attributes.get("hx-vals") or "{}")
                except ValueError:
                    values = {}
                if isinstance(values, dict):
                    for key, value in values.items():
                        extra.add(str(key), str(value), "hidden")
        if self._form is None:
            return
        name = attributes.get("name")
        if tag == "input":
            self._form.add(name, attributes.get("value"), attributes.get("type") or "text", attributes)
        elif tag == "button":
            self._form.add(name, attributes.get("value"), "submit")
        elif tag == "select":
            self._select = name
            self._form.add(name, "", "select")
        elif tag == "option" and self._select:
            self._form.add(self._select, attributes.get("value"), "select")
        elif tag == "textarea":
            self._textarea = name
            self._form.add(name, "", "textarea", attributes)

    def handle_data(self, data: str) -> None:
        if self._form is not None and self._textarea:
            self._form.add(self._textarea, data, "textarea")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None


def forms_in(html: str, page_path: str) -> list[Form]:
    parser = FormParser()
    parser.feed(html)
    for form in parser.forms:
        form.action = urlsplit(form.action).path or page_path
    return parser.forms


# --- Values -------------------------------------------------------------------------------------------------
NASTY = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\n",
    "Down\nBcc: someone@example.com",
    "line\r\nbreak",
    "\u2028",
    "\x1b[31m",
    "😀",
    "é",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "%00",
    "..\\..\\",
    "true",
    "null",
    "[]",
    "{}",
]
NUMBERS = ["-1", "0", "1.5", "1e308", "nan", "٣" * 40, "9" * 400, str(2**31), str(2**63), str(-(2**63) - 1)]
DATES = ["9999-12-31T23:59", "9999-12-31 23:59:59.999999", "0001-01-01T00:00", "10000-01-01T00:00", "2025-02-30T10:00"]
# What a person would type into a field of each kind: with these, whole forms pass and reach the views' work.
BENIGN = {
    "text": "x",
    "textarea": "x",
    "search": "x",
    "password": "correct-horse-battery-staple",
    "email": "someone@example.com",
    "url": "https://example.com/",
    "number": "1",
    "datetime-local": "2025-03-01T14:30",
    "date": "2025-03-01",
}
TYPED = {"number": NUMBERS, "datetime-local": DATES, "date": DATES, "hidden": NUMBERS + DATES[:2]}
LENGTHS = [256, 300, 1001, 2001, 4097, 10_001, 100_000]
any_text = st.text(max_size=60)


def long_values(maxlength: int | None = None) -> st.SearchStrategy[str]:
    """Long text: just over the field's limit, or over any limit the app has."""
    lengths = ([maxlength, maxlength + 1] if maxlength else []) + LENGTHS
    return st.builds(
        lambda char, length: char * length,
        st.sampled_from(["x", "é", "\n", "9", "😀", " "]),
        st.sampled_from(lengths) | st.integers(0, 12_000),
    )


def _numbers(bounds: set[str]) -> tuple[list[str], list[str]]:
    """Values inside a number input's declared bounds, and just outside them."""
    inside, outside = [], []
    for bound in bounds:
        try:
            number = float(bound)
        except ValueError:
            continue
        step = 1 if number == int(number) else 0.1
        shown = (lambda value: str(int(value))) if step == 1 else str
        inside.append(shown(number))
        outside += [shown(number - step), shown(number + step)]
    return inside, outside


def valid(entry: Field) -> st.SearchStrategy[str]:
    inside, _outside = _numbers(entry.bounds)
    benign = {BENIGN[kind] for kind in entry.kinds if kind in BENIGN}
    offered = entry.values | set(inside) | (benign if not inside else set())
    return st.sampled_from(sorted(offered)) if offered else any_text


def hostile(entry: Field) -> st.SearchStrategy[str]:
    """A value made to break a field of this kind: past its bounds or length, of the wrong type, or hostile text."""
    _inside, outside = _numbers(entry.bounds)
    typed = sorted({value for kind in entry.kinds for value in TYPED.get(kind, [])} | set(outside))
    choices = [st.sampled_from(NASTY), any_text, long_values(entry.maxlength), st.sampled_from(NUMBERS + DATES)]
    if typed:
        choices = [st.sampled_from(typed)] * 3 + choices
    return st.one_of(choices)


def values(entry: Field) -> st.SearchStrategy[str]:
    """Mostly what the page offers (so whole forms pass), otherwise a value made to break things."""
    return st.one_of(valid(entry), valid(entry), valid(entry), hostile(entry))


def _is_button(entry: Field) -> bool:
    return entry.kinds <= {"submit", "button"}


@st.composite
def field_pairs(draw, fields: dict[str, Field]) -> list[tuple[str, str]]:
    """The form's fields, as a browser sends them (valid values, one submit button) with one field made hostile,
    or with any mix, or any pairs at all (repeated, missing, made-up names)."""
    names = [name for name in sorted(fields) if not _is_button(fields[name])]
    buttons = [name for name in sorted(fields) if _is_button(fields[name])]
    shapes = ["valid", "one_hostile", "one_hostile", "one_hostile", "mixed", "pairs"]
    shape = draw(st.sampled_from(shapes) if names else st.just("pairs"))
    if shape == "pairs":
        made_up = st.tuples(st.sampled_from(["", "x", "\x00", "a" * 300, "é"]) | any_text, hostile(Field()))
        known = [st.tuples(st.just(name), values(fields[name])) for name in sorted(fields)]
        return draw(st.lists(st.one_of(*known, made_up) if known else made_up, max_size=12))
    bad = draw(st.sampled_from(names)) if shape == "one_hostile" else None
    pairs = []
    for name in names:
        if name == bad:
            strategy = hostile(fields[name])
        else:
            strategy = values(fields[name]) if shape == "mixed" else valid(fields[name])
        pairs.append((name, draw(strategy, label=name)))
    if buttons:
        button = draw(st.sampled_from(buttons))
        pairs.append((button, draw(valid(fields[button]))))
    return pairs


def urlencoded(pairs: list[tuple[str, str]]) -> bytes:
    return urlencode(pairs, encoding="utf-8", errors="surrogatepass").encode("ascii")


def multipart(pairs: list[tuple[str, str]]) -> bytes:
    data: dict[str, list[str]] = {}
    for name, value in pairs:
        data.setdefault(name.encode("utf-8", "replace").decode(), []).append(value.encode("utf-8", "replace").decode())
    return encode_multipart(BOUNDARY, data)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text
json_scalars |= st.sampled_from(NASTY + NUMBERS + DATES) | long_values()
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3), max_leaves=8
)
CHARSETS = ["utf-8", "UTF-8", "utf-16", "utf-32", "latin-1", "rot13", "unicode_escape", "no-such-codec", ""]


@st.composite
def bodies(draw, fields: dict[str, Field], *, json_first: bool) -> tuple[bytes, str]:
    """``(body, content type)``: the form's fields urlencoded (as a browser sends them), as multipart, as JSON, or
    bytes of any kind; now and then with a declared charset."""
    if json_first:
        kinds = ["json", "json", "form", "multipart", "raw"]
    else:
        kinds = ["form", "form", "form", "multipart", "json", "raw"]
    kind = draw(st.sampled_from(kinds))
    if kind == "form":
        body, content_type = urlencoded(draw(field_pairs(fields))), "application/x-www-form-urlencoded"
    elif kind == "multipart":
        body, content_type = multipart(draw(field_pairs(fields))), f"multipart/form-data; boundary={BOUNDARY}"
    elif kind == "json":
        if json_first:
            known = dict.fromkeys(("service_id", "title", "status", "description", "resolution_stage"), json_values)
            payload = draw(st.fixed_dictionaries({}, optional=known) | json_values)
        else:
            payload = draw(json_values)
        body = json.dumps(payload, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
        content_type = "application/json"
    else:
        body = draw(st.binary(max_size=300))
        content_type = draw(st.sampled_from(["application/octet-stream", "text/plain", "", "multipart/form-data"]))
    if draw(st.integers(0, 9)) == 0:
        content_type += f"; charset={draw(st.sampled_from(CHARSETS))}"
    return body, content_type


# Header values as gunicorn passes them on: any byte but the control characters it refuses with a 400
# (RFC 9110 5.5), handed over by WSGI as latin-1 text. A NUL in a header never reaches the app in production.
HEADER_BYTES = [byte for byte in range(256) if not (byte <= 0x08 or 0x0A <= byte <= 0x1F or byte == 0x7F)]
header_text = st.one_of(
    st.sampled_from(["", " ", "é", "😀".encode().decode("latin-1"), "9" * 400, "<script>", "' OR 1=1 --"]),
    st.lists(st.sampled_from(HEADER_BYTES), max_size=60).map(lambda raw: bytes(raw).decode("latin-1")),
)
long_header_text = st.builds(
    lambda char, length: char * length, st.sampled_from(["x", "\xe9", "\t", " ", "\xff"]), st.integers(0, 12_000)
)


@st.composite
def headers(draw, api_key: str, field_names: list[str]) -> dict[str, str]:
    """Extra request headers as WSGI environ keys: htmx's, an Authorization of every kind, a request id, and the
    ones logged or parsed on the way (forwarded-for, user agent, accept, referer, language)."""
    chosen: dict[str, str] = {}
    if draw(st.booleans()):
        chosen["HTTP_HX_REQUEST"] = "true"
        if draw(st.booleans()):
            chosen["HTTP_HX_TRIGGER_NAME"] = draw(st.sampled_from(field_names) if field_names else header_text)
        if draw(st.integers(0, 4)) == 0:
            chosen["HTTP_HX_HISTORY_RESTORE_REQUEST"] = "true"
        if draw(st.integers(0, 4)) == 0:
            chosen["HTTP_HX_CURRENT_URL"] = draw(header_text)
    authorization = draw(
        st.one_of(
            st.none(),
            st.just(f"Bearer {api_key}"),
            st.builds(lambda text: f"Bearer {text}", header_text),
            header_text,
        )
    )
    if authorization is not None:
        chosen["HTTP_AUTHORIZATION"] = authorization
    if draw(st.integers(0, 5)) == 0:
        chosen["HTTP_X_REQUEST_ID"] = draw(header_text)
    for name in ("HTTP_X_FORWARDED_FOR", "HTTP_USER_AGENT", "HTTP_ACCEPT", "HTTP_REFERER", "HTTP_ACCEPT_LANGUAGE"):
        if draw(st.integers(0, 5)) == 0:
            chosen[name] = draw(header_text | long_header_text)
    return chosen
