"""What counts as our effect on IsDown (matching.py): pure judgements, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from incidents import isdown, matching

NOW = datetime(2026, 3, 15, 10, 0, tzinfo=UTC)
CREATE = isdown.create_request(
    service_id=1001, title="Checkout down", severity="major", description="We are on it.", stage="investigating"
)


def remote(
    remote_id="1",
    *,
    title="Checkout down",
    severity="major",
    created_at=NOW,
    updated_at=None,
    updates=(("investigating", "We are on it."),),
    update_times=None,
):
    times = update_times or [created_at] * len(updates)
    return isdown.RemoteIncident(
        id=remote_id,
        title=title,
        description=updates[-1][1] if updates else "",
        severity=severity,
        resolved=False,
        created_at=created_at,
        updated_at=updated_at or created_at,
        resolved_at=None,
        service_id=1001,
        service_name="API",
        url=None,
        updates=tuple(isdown.RemoteUpdate(s, d, t) for (s, d), t in zip(updates, times, strict=True)),
    )


def complete(*incidents):
    return isdown.Listing(tuple(incidents), True, "read to the end")


def test_an_effect_reads_everything_the_request_approved():
    effect = matching.Effect.of(CREATE)
    assert (effect.creates, effect.title, effect.severity, effect.stage, effect.description) == (
        True,
        "Checkout down",
        "major",
        "investigating",
        "We are on it.",
    )
    title_only = matching.Effect.of(isdown.update_request("9", title="New"))
    assert not title_only.posts_an_entry and title_only.severity is None
    entry = matching.Effect.of(isdown.update_request("9", description="Fixed.", stage="resolved"))
    assert entry.posts_an_entry and entry.title is None


def test_a_create_matches_after_isdowns_whitespace_and_line_ending_normalisation():
    effect = matching.Effect.of(
        isdown.create_request(service_id=1, title=" Down ", severity="minor", description="a\r\nb ", stage="identified")
    )
    assert effect.created(remote(title="Down", severity="minor", updates=(("identified", "a\nb"),)))


def test_the_title_alone_is_never_a_match():
    effect = matching.Effect.of(CREATE)
    for other in (
        remote(severity="minor"),
        remote(updates=(("identified", "We are on it."),)),
        remote(updates=(("investigating", "Someone else's words."),)),
    ):
        assert not effect.created(other)


def test_judge_create_finds_one_exact_match_since_the_first_attempt_and_skips_claimed_and_older_ones():
    effect = matching.Effect.of(CREATE)
    found = matching.judge_create(
        listing=complete(remote("3"), remote("2", created_at=NOW - timedelta(hours=1)), remote("1", title="Other")),
        effect=effect,
        since=NOW,
        claimed=set(),
    )
    assert found.found.id == "3"
    claimed = matching.judge_create(listing=complete(remote("3")), effect=effect, since=NOW, claimed={"3"})
    assert claimed.absent
    skewed = complete(remote("4", created_at=NOW - timedelta(seconds=3)))  # IsDown's clock a little behind
    assert matching.judge_create(listing=skewed, effect=effect, since=NOW, claimed=()).found.id == "4"


def test_judge_create_with_two_exact_matches_or_an_incomplete_list_is_ambiguous():
    effect = matching.Effect.of(CREATE)
    twins = matching.judge_create(listing=complete(remote("5"), remote("6")), effect=effect, since=NOW, claimed=())
    assert twins.ambiguous and "#5" in twins.reason and "#6" in twins.reason
    partial = isdown.Listing((), False, "stopped after 50 pages")
    verdict = matching.judge_create(listing=partial, effect=effect, since=NOW, claimed=())
    assert verdict.ambiguous and "stopped after 50 pages" in verdict.reason


def test_judge_update_counts_the_approved_entry_since_the_first_attempt():
    effect = matching.Effect.of(isdown.update_request("1", description="Fixed.", stage="resolved"))
    old = (("resolved", "Fixed."),)
    assert matching.judge_update(
        remote=remote(updates=old, update_times=[NOW - timedelta(hours=1)]), effect=effect, since=NOW
    ).absent
    once = remote(updates=(("investigating", "x"), ("resolved", "Fixed.")), update_times=[NOW, NOW])
    assert matching.judge_update(remote=once, effect=effect, since=NOW).found is once
    twice = remote(updates=(("resolved", "Fixed."), ("resolved", "Fixed.")), update_times=[NOW, NOW])
    assert matching.judge_update(remote=twice, effect=effect, since=NOW).ambiguous


def test_an_update_entry_that_is_there_with_another_title_than_approved_is_ambiguous():
    effect = matching.Effect.of(isdown.update_request("1", title="Renamed", description="Fixed.", stage="resolved"))
    there = remote(title="Someone else's title", updates=(("resolved", "Fixed."),))
    verdict = matching.judge_update(remote=there, effect=effect, since=NOW)
    assert verdict.ambiguous and "title or severity" in verdict.reason


def test_a_title_change_is_found_if_in_place_absent_if_untouched_since_and_ambiguous_if_changed_otherwise():
    effect = matching.Effect.of(isdown.update_request("1", title="New"))
    assert matching.judge_update(remote=remote(title="New"), effect=effect, since=NOW).found
    untouched = remote(title="Old", created_at=NOW - timedelta(hours=2))
    assert matching.judge_update(remote=untouched, effect=effect, since=NOW).absent
    touched = remote(title="Third", created_at=NOW - timedelta(hours=2), updated_at=NOW + timedelta(seconds=5))
    assert matching.judge_update(remote=touched, effect=effect, since=NOW).ambiguous


def test_twins_are_other_exact_copies_of_our_effect():
    effect = matching.Effect.of(CREATE)
    listing = complete(remote("8"), remote("7"), remote("6", title="Other"))
    assert matching.twins_of_create(listing=listing, effect=effect, since=NOW, own_id="7", claimed=()) == ["8"]
    assert matching.twins_of_create(listing=listing, effect=effect, since=NOW, own_id="7", claimed={"8"}) == []
    entry = matching.Effect.of(isdown.update_request("1", description="Fixed.", stage="resolved"))
    twice = remote(updates=(("resolved", "Fixed."), ("resolved", "Fixed.")))
    assert matching.extra_entries(remote=twice, effect=entry, since=NOW) == 1
    assert matching.extra_entries(remote=twice, effect=entry, since=NOW, expected=2) == 0
    title_only = matching.Effect.of(isdown.update_request("1", title="New"))
    assert matching.extra_entries(remote=twice, effect=title_only, since=NOW) == 0
