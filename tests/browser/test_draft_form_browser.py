"""The draft form in a real browser: the preview follows the last keystroke, limits, focus, keyboard, safe text."""

from __future__ import annotations

import contextlib
import re

import pytest
from playwright.sync_api import Error, Page, Route, expect

from incidents.models import Draft

from .pagecheck import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def open_new_draft(page: Page, base: str, password: str) -> None:
    sign_in(page, base, "responder", password)
    page.goto(f"{base}/drafts/new/")
    page.select_option("#id_service", label="API (#1001)")


def test_preview_ends_with_the_final_text_when_an_older_answer_is_slow(
    live_server, responder, api_service, password, page
):
    open_new_draft(page, live_server.url, password)
    # The title's validation (sent before any description was typed) is held back until the description's
    # final validation has been answered: the order the network happened to deliver them in issue 11.
    held: list[Route] = []

    def hold_early_validations(route: Route) -> None:
        body = route.request.post_data or ""
        if "action=validate" in body and "final" not in body:
            held.append(route)
        else:
            route.continue_()

    # Every validation sent before the final text is held back until the final one has been answered: the
    # order the network happened to deliver them in issue 11.
    page.route("**/drafts/new/", hold_early_validations)
    page.fill("#id_title", "Elevated API errors")
    page.locator("#id_title").blur()
    page.fill("#id_description", "Partial")
    page.locator("#id_description").blur()
    page.fill("#id_description", "Partial outage, final text")
    page.locator("#id_description").blur()
    expect(page.locator("#request-preview")).to_contain_text("Partial outage, final text")
    for route in held:  # the stale answers arrive now, unless the browser already dropped their requests
        with contextlib.suppress(Error):
            route.continue_()
    for route in held:
        route.request.response()  # answered, or None when the browser had dropped it
    page.unroute("**/drafts/new/")
    page.wait_for_function("() => !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')")
    expect(page.locator("#request-preview")).to_contain_text("Partial outage, final text")
    expect(page.locator("#request-preview")).to_contain_text('"title": "Elevated API errors"')


def test_over_long_title_is_kept_whole_and_the_counter_turns_red(live_server, responder, api_service, password, page):
    open_new_draft(page, live_server.url, password)
    page.fill("#id_title", "x" * 300)
    assert page.eval_on_selector("#id_title", "el => el.value.length") == 300
    counter = page.locator("[data-counter-for=id_title]")
    expect(counter).to_have_text("300 / 255")
    expect(counter).to_have_class(re.compile(r"\bover\b"))


def test_failed_save_focuses_the_error_summary_and_its_links_reach_the_fields(
    live_server, responder, api_service, password, page
):
    open_new_draft(page, live_server.url, password)
    page.click("button[value=save]")
    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    expect(summary).to_contain_text("problem")
    summary.locator('a[href="#id_title"]').click()
    expect(page.locator("#id_title")).to_be_focused()


def test_first_field_is_focused_on_a_new_draft(live_server, responder, api_service, password, page):
    sign_in(page, live_server.url, "responder", password)
    page.goto(f"{live_server.url}/drafts/new/")
    expect(page.locator("#id_service")).to_be_focused()


def test_ctrl_enter_saves_the_draft(live_server, responder, api_service, password, page):
    open_new_draft(page, live_server.url, password)
    page.fill("#id_title", "Saved from the keyboard")
    page.fill("#id_description", "Typed, then Ctrl+Enter.")
    page.locator("#id_description").press("Control+Enter")
    expect(page.locator("#draft-state")).to_be_visible()
    assert Draft.objects.get().title == "Saved from the keyboard"


def test_leaving_a_dirty_form_asks_first(live_server, responder, api_service, password, page):
    open_new_draft(page, live_server.url, password)
    page.locator("#id_title").press_sequentially("Unsaved")
    dialogs: list[str] = []

    def dismiss(dialog) -> None:
        dialogs.append(dialog.type)
        dialog.dismiss()

    page.on("dialog", dismiss)
    page.click("nav a >> text=Incidents")
    expect(page).to_have_url(re.compile(r"/drafts/new/$"))
    assert dialogs == ["beforeunload"]


def test_typed_text_survives_a_reload_until_discarded(live_server, responder, api_service, password, page):
    open_new_draft(page, live_server.url, password)
    page.locator("#id_title").press_sequentially("Kept in the browser")
    page.on("dialog", lambda dialog: dialog.accept())
    page.reload()
    expect(page.locator("#restored-notice")).to_be_visible()
    expect(page.locator("#id_title")).to_have_value("Kept in the browser")
    assert not Draft.objects.exists()  # nothing reached the server
    page.click("#restored-notice button")
    expect(page.locator("#restored-notice")).to_be_hidden()
    expect(page.locator("#id_title")).to_have_value("")


def test_saving_clears_the_stored_copy(live_server, responder, api_service, password, page):
    open_new_draft(page, live_server.url, password)
    page.locator("#id_title").press_sequentially("Saved properly")
    page.fill("#id_description", "Body")
    page.click("button[value=save]")
    expect(page.locator("#draft-state")).to_be_visible()
    page.goto(f"{live_server.url}/drafts/new/")
    expect(page.locator("#id_title")).to_have_value("")
    expect(page.locator("#restored-notice")).to_be_hidden()
