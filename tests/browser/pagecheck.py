"""What every page must be, checked the same way wherever a browser test reaches one: it fits the window (no
sideways scroll, at 390 px too), axe-core finds no critical or serious violation, and a screenshot is written to
``test-results/screenshots/<width>/<name>.png`` (README, Tests) so a reviewer can look without running anything.

axe-core comes from its npm package (``make test`` installs it: package.json). It is injected as a script, which
the app's strict CSP forbids: pages are inspected in a browser context made with ``bypass_csp=True``, in tests
only (``inspecting_context``); the CSP itself is asserted by the tests that use the normal context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Page, expect

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = ROOT / "test-results" / "screenshots"
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
BLOCKING = ("critical", "serious")


def sign_in(page: Page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    expect(page.locator(".whoami .username")).to_have_text(username)


def inspecting_context(browser: Browser, width: str) -> BrowserContext:
    w, h = WIDTHS[width]
    return browser.new_context(viewport={"width": w, "height": h}, bypass_csp=True)


@dataclass
class Findings:
    """Problems found on every page inspected, reported together (one failing page does not hide the next)."""

    problems: list[str] = field(default_factory=list)
    pages: list[str] = field(default_factory=list)

    def inspect(self, page: Page, name: str) -> None:
        width = page.viewport_size["width"] if page.viewport_size else 0
        label = f"{name} at {width}px"
        self.pages.append(label)
        page.wait_for_load_state("load")
        overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        if overflow > 0:
            wide = page.evaluate(
                """() => [...document.querySelectorAll('body *')]
                    .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
                    .slice(0, 3).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
                    + (e.className && typeof e.className === 'string' ? '.' + e.className.split(' ').join('.') : ''))"""
            )
            self.problems.append(f"{label}: scrolls sideways by {overflow}px (widest: {', '.join(wide)})")
        if not page.title().strip() or "<" in page.title():
            self.problems.append(f"{label}: no proper <title> ({page.title()[:80]!r})")
        if page.evaluate("() => typeof window.axe") == "undefined":
            page.add_script_tag(path=str(AXE))
        result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        for violation in result["violations"]:
            if violation["impact"] in BLOCKING:
                targets = ", ".join(json.dumps(node["target"]) for node in violation["nodes"][:3])
                rule = f"{violation['impact']} {violation['id']} ({violation['help']})"
                self.problems.append(f"{label}: axe {rule} at {targets}")
        folder = SHOTS / str(width)
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)

    def assert_clean(self) -> None:
        assert not self.problems, f"{len(self.problems)} problems over {len(self.pages)} pages:\n" + "\n".join(
            self.problems
        )
