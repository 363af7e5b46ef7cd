"""Rules that tie timing settings together, checked by settings.py at start-up and by the worker at its start
(its command line can override the time limits)."""

from __future__ import annotations


def time_limit_problem(*, soft: float | None, hard: float | None, lease: float, call: float) -> str | None:
    """Why these limits are unsafe, or None. A task must be stopped before its lease runs out (or the sweeper
    could take a row over while the task still runs), and must have time for one whole IsDown call."""
    if soft is None or soft >= lease:
        return f"the soft time limit ({soft} s) must be below PUBLISH_LEASE_SECONDS ({lease} s)"
    if hard is not None and hard >= lease:
        return f"the hard time limit ({hard} s) must be below PUBLISH_LEASE_SECONDS ({lease} s)"
    if soft <= call:
        return f"the soft time limit ({soft} s) must exceed ISDOWN_TIMEOUT ({call} s)"
    return None


def windows_problem(name: str, windows: list[float]) -> str | None:
    """A window is a list of increasing offsets in seconds, at least one."""
    if not windows:
        return f"{name} needs at least one point in seconds, e.g. 5,30,120,300"
    if any(point < 0 for point in windows) or windows != sorted(windows) or len(set(windows)) != len(windows):
        return f"{name} must be increasing, non-negative seconds, e.g. 5,30,120,300; got {windows}"
    return None
