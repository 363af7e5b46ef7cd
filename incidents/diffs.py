"""Diffs of draft fields by line, then by word inside the changed lines, as segments a template renders (and
escapes) keeping line breaks. Joined, the "same" and "del" segments are the old text, "same" and "ins" the new."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

_TOKENS = re.compile(r"\s+|[^\s]+")
_LINE_END = "\r\n"
# A line break that was removed or added is shown, or it would be invisible.
NEWLINE_MARK = "↵"


@dataclass(frozen=True)
class Segment:
    op: str  # "same", "del" or "ins"
    text: str

    @property
    def shown(self) -> str:
        """The text as displayed: a removed or added line break is marked."""
        return self.text if self.op == "same" else self.text.replace("\n", NEWLINE_MARK + "\n")


@dataclass(frozen=True)
class FieldDiff:
    field: str
    old: str
    new: str
    segments: tuple[Segment, ...]

    @property
    def changed(self) -> bool:
        return self.old != self.new


def _word_diff(old: str, new: str) -> list[Segment]:
    a, b = _TOKENS.findall(old), _TOKENS.findall(new)
    segments: list[Segment] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            segments.append(Segment("same", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            segments.append(Segment("del", "".join(a[i1:i2])))
        if j2 > j1:
            segments.append(Segment("ins", "".join(b[j1:j2])))
    return segments


def diff_text(old: str, new: str) -> tuple[Segment, ...]:
    """Lines first (so words never pair up across lines), then words inside each block of changed lines."""
    a, b = (old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True)
    keys_a, keys_b = [line.rstrip(_LINE_END) for line in a], [line.rstrip(_LINE_END) for line in b]
    segments: list[Segment] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=keys_a, b=keys_b, autojunk=False).get_opcodes():
        if tag != "equal":
            segments.extend(_word_diff("".join(a[i1:i2]), "".join(b[j1:j2])))
            continue
        for line_a, line_b in zip(a[i1:i2], b[j1:j2], strict=True):
            body = line_a.rstrip(_LINE_END)
            segments.append(Segment("same", body))
            end_a, end_b = line_a[len(body) :], line_b[len(body) :]
            if end_a == end_b:
                segments.append(Segment("same", end_a))
            else:  # the last line gained or lost its line break
                segments.extend([Segment("del", end_a), Segment("ins", end_b)])
    merged: list[Segment] = []
    for segment in segments:
        if not segment.text:
            continue
        if merged and merged[-1].op == segment.op:
            merged[-1] = Segment(segment.op, merged[-1].text + segment.text)
        else:
            merged.append(segment)
    return tuple(merged)


def diff_fields(old: dict[str, str], new: dict[str, str], labels: dict[str, str] | None = None) -> list[FieldDiff]:
    """One FieldDiff per field present in either side, in the order of ``new``."""
    names = list(dict.fromkeys([*new, *old]))
    return [
        FieldDiff(
            field=(labels or {}).get(name, name),
            old=str(old.get(name) or ""),
            new=str(new.get(name) or ""),
            segments=diff_text(str(old.get(name) or ""), str(new.get(name) or "")),
        )
        for name in names
    ]
