"""What counts as our effect on IsDown: pure judgements over what IsDown shows, for a request whose outcome is
unknown (reconcile), after a resend (the watch for a late twin), and in sync (attributing what landed).

A match is on everything that was approved, never the title alone, compared after the normalisation IsDown
may apply (surrounding whitespace, line endings):
- a create: title, severity, and the first update entry's stage and description (the incident's own
  ``description`` is its latest update, not necessarily ours);
- an update: the update entry (stage and description) and every field the PATCH changes.
A candidate with other words is someone else's, not ours; several exact candidates are ambiguous; nothing is
"absent" unless the evidence was read in full. Only IsDown's updates created since the first attempt (less a
clock-skew margin) count, so an older identical incident or update is never taken for ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import isdown

# IsDown's clock and ours differ: something stamped a little before our first attempt may still be ours.
CLOCK_SKEW = timedelta(seconds=10)


def normalise(text: str | None) -> str:
    """Text as IsDown may store it: line endings unified, surrounding whitespace dropped."""
    return (text or "").replace("\r\n", "\n").replace("\r", "\n").strip()


@dataclass(frozen=True)
class Effect:
    """What one approved request puts on IsDown, read from its exact body."""

    creates: bool
    title: str | None = None
    severity: str | None = None
    stage: str | None = None
    description: str | None = None

    @classmethod
    def of(cls, request: isdown.Request) -> Effect:
        body = request.json()
        creates = request.method == "POST"
        has_entry = creates or "resolution_stage" in body or "description" in body
        return cls(
            creates=creates,
            title=body.get("title"),
            severity=body.get("status") if creates or "status" in body else None,
            stage=(body.get("resolution_stage") or "investigating") if has_entry else None,
            description=(body.get("description") or "") if has_entry else None,
        )

    @property
    def posts_an_entry(self) -> bool:
        return self.stage is not None

    def entry_matches(self, update: isdown.RemoteUpdate) -> bool:
        return normalise(update.stage) == normalise(self.stage) and normalise(update.description) == normalise(
            self.description
        )

    def fields_match(self, remote: isdown.RemoteIncident) -> bool:
        """The title and severity the request sets (if it sets them) are what IsDown shows."""
        if self.title is not None and normalise(remote.title) != normalise(self.title):
            return False
        return self.severity is None or normalise(remote.severity) == normalise(self.severity)

    def created(self, remote: isdown.RemoteIncident) -> bool:
        """``remote`` is exactly the incident this create would make."""
        return bool(remote.updates) and self.fields_match(remote) and self.entry_matches(remote.updates[0])


@dataclass(frozen=True)
class Verdict:
    """``found``: the one incident that carries our effect. ``absent``: proven not there. Neither: ambiguous."""

    found: isdown.RemoteIncident | None = None
    absent: bool = False
    reason: str = ""
    # When several exact copies are there: the incidents carrying them (a create), or the incident once per
    # copy of the update entry (an update). Several copies of one publication's own words are its duplicates.
    copies: tuple[isdown.RemoteIncident, ...] = ()

    @property
    def ambiguous(self) -> bool:
        return self.found is None and not self.absent


def judge_create(*, listing: isdown.Listing, effect: Effect, since: datetime, claimed: Iterable[str]) -> Verdict:
    """Did our create land? ``claimed`` are ids already linked to other publications or incidents."""
    claimed = set(claimed)
    exact = [
        remote
        for remote in listing.incidents
        if remote.created_at >= since - CLOCK_SKEW and remote.id not in claimed and effect.created(remote)
    ]
    if len(exact) == 1:
        return Verdict(found=exact[0], reason=f"found incident #{exact[0].id} with the approved words")
    if len(exact) > 1:
        ids = ", ".join(f"#{remote.id}" for remote in exact)
        return Verdict(
            reason=f"{len(exact)} incidents carry the approved words since the first attempt: {ids}",
            copies=tuple(sorted(exact, key=lambda remote: (remote.created_at, remote.id))),
        )
    if not listing.complete:
        return Verdict(reason=f"not found, but the list could not be read in full ({listing.reason})")
    return Verdict(
        absent=True, reason=f"no incident with the approved words since the first attempt ({listing.reason})"
    )


def matching_entries(remote: isdown.RemoteIncident, effect: Effect, since: datetime) -> list[isdown.RemoteUpdate]:
    return [u for u in remote.updates if u.created_at >= since - CLOCK_SKEW and effect.entry_matches(u)]


def judge_update(*, remote: isdown.RemoteIncident, effect: Effect, since: datetime) -> Verdict:
    """Did our PATCH land on ``remote``? An update entry is counted; a title/severity-only change is judged by
    the fields and by whether IsDown's incident changed at all since the first attempt."""
    if effect.posts_an_entry:
        entries = matching_entries(remote, effect, since)
        if len(entries) > 1:
            copies = (remote,) * len(entries) if effect.fields_match(remote) else ()
            return Verdict(reason=f"{len(entries)} identical updates since the first attempt", copies=copies)
        if len(entries) == 1:
            if effect.fields_match(remote):
                return Verdict(found=remote, reason=f"found the update of {entries[0].created_at.isoformat()}")
            return Verdict(reason="the update is there, but the title or severity is not what was approved")
        return Verdict(absent=True, reason="no update with the approved words since the first attempt")
    if effect.fields_match(remote):
        return Verdict(found=remote, reason="the title and severity are as approved")
    if remote.updated_at is not None and remote.updated_at < since - CLOCK_SKEW:
        return Verdict(absent=True, reason="the incident has not changed since before the first attempt")
    return Verdict(
        reason=f"the incident changed since the first attempt, but to {remote.title!r} / {remote.severity!r}"
    )


def twins_of_create(
    *, listing: isdown.Listing, effect: Effect, since: datetime, own_id: str, claimed: Iterable[str]
) -> list[str]:
    """Ids of incidents other than ours that carry our create's words: late twins of a resent create."""
    claimed = set(claimed) | {own_id}
    return [
        remote.id
        for remote in listing.incidents
        if remote.created_at >= since - CLOCK_SKEW and remote.id not in claimed and effect.created(remote)
    ]


def extra_entries(*, remote: isdown.RemoteIncident, effect: Effect, since: datetime, expected: int = 1) -> int:
    """How many more of our update's entries IsDown shows than ``expected`` (ours, plus identical ones that
    other publications posted since): a late twin of a resent update."""
    if not effect.posts_an_entry:
        return 0  # a title or severity change is idempotent: it cannot be duplicated
    return max(0, len(matching_entries(remote, effect, since)) - expected)
