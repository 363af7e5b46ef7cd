"""Word-level diffs of draft fields, as segments a template renders (and escapes)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

_TOKENS = re.compile(r"\s+|[^\s]+")


@dataclass(frozen=True)
class Segment:
    op: str  # "same", "del" or "ins"
    text: str


@dataclass(frozen=True)
class FieldDiff:
    field: str
    old: str
    new: str
    segments: tuple[Segment, ...]

    @property
    def changed(self) -> bool:
        return self.old != self.new


def diff_text(old: str, new: str) -> tuple[Segment, ...]:
    a, b = _TOKENS.findall(old or ""), _TOKENS.findall(new or "")
    segments: list[Segment] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            segments.append(Segment("same", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            segments.append(Segment("del", "".join(a[i1:i2])))
        if j2 > j1:
            segments.append(Segment("ins", "".join(b[j1:j2])))
    return tuple(segments)


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
