"""What a developer meets on `make run`: bounded database connections, a beat schedule per checkout, a demo
world whose drafts can be approved, one port that web and worker agree on, and a greeting that says where to go."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.db import connection
from django.templatetags.static import static

from incidents.models import Membership, Role, Team

from .conftest import ADMIN_URL
from .waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_in_subprocess(expression: str, **env: str) -> subprocess.CompletedProcess:
    """Evaluate ``expression`` over freshly loaded settings, with the given environment."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("SITE_URL", "WEB_PORT", "ISDOWN_API_URL")}
    full_env.update(env)
    code = f"import django; django.setup(); from django.conf import settings; print({expression})"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**full_env, "DJANGO_SETTINGS_MODULE": "isdown_admin.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- Database connections under the development server -----------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_development_server_does_not_keep_a_database_connection_per_idle_browser_connection():
    # Each keep-alive browser connection is a runserver thread; with persistent database connections each
    # idle one held a PostgreSQL connection, and a day of tabs and polling filled max_connections.
    port, tag = free_port(), f"devserver-{os.getpid()}"
    database_url = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/" + connection.settings_dict["NAME"]
    env = {**os.environ, "DEBUG": "1", "DATABASE_URL": database_url, "PGAPPNAME": tag}
    env.pop("DATABASE_CONN_MAX_AGE", None)
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", "--skip-checks"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) for _ in range(8)]
    try:

        def healthz_answers() -> bool:
            try:
                return clients[0].get("/healthz").status_code in (200, 503)
            except httpx.TransportError:
                return False

        wait_for(healthz_answers, timeout=30, what="runserver to answer")
        for client in clients:  # eight browser connections, each left open and idle after one page
            assert client.get("/healthz").status_code in (200, 503)

        def held() -> int:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                return admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [tag]
                ).fetchone()[0]

        wait_for(lambda: held() <= 1, timeout=5, what="idle runserver threads to give their connections back")
    finally:
        for client in clients:
            client.close()
        server.terminate()
        server.wait(timeout=10)


def test_persistent_connections_are_a_setting_off_by_default_and_bounded():
    assert settings_in_subprocess("settings.DATABASES['default']['CONN_MAX_AGE']", DEBUG="1").stdout.strip() == "0"
    on = settings_in_subprocess("settings.DATABASES['default']['CONN_MAX_AGE']", DEBUG="1", DATABASE_CONN_MAX_AGE="60")
    assert on.stdout.strip() == "60"
    bad = settings_in_subprocess("1", DEBUG="1", DATABASE_CONN_MAX_AGE="forever")
    assert bad.returncode != 0 and "DATABASE_CONN_MAX_AGE" in bad.stderr


# --- Beat ----------------------------------------------------------------------------------------------------
def beat_commands() -> list[str]:
    makefile = (ROOT / "Makefile").read_text()
    commands = [line.split(":=", 1)[1].strip() for line in makefile.splitlines() if line.startswith("BEAT_CMD :=")]
    commands += [
        line.split(":", 1)[1].strip()
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line.startswith("beat:")
    ]
    return commands


def test_the_beat_schedule_file_belongs_to_the_checkout_it_runs_from():
    # One fixed /tmp path for every instance: two checkouts on one machine shared (and fought over) one file.
    for command in beat_commands():
        schedule = next(arg.split("=", 1)[1] for arg in shlex.split(command) if arg.startswith("--schedule="))
        assert not Path(schedule).is_absolute(), command
        ignored = subprocess.run(["git", "check-ignore", "-q", schedule], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{schedule} is not in .gitignore"


# --- The demo world ----------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_every_demo_team_has_two_approvers_so_an_approvers_own_draft_can_be_approved(settings):
    settings.DEBUG = True
    call_command("seed_demo")
    for team in Team.objects.all():
        approvers = Membership.objects.filter(team=team, role=Role.APPROVER).count()
        responders = Membership.objects.filter(team=team, role=Role.RESPONDER).count()
        assert approvers >= 2, team.name
        assert responders >= 1, team.name


@pytest.mark.django_db
def test_seed_demo_always_says_where_to_go_and_who_to_sign_in_as(settings, capsys):
    settings.DEBUG = True
    settings.SITE_URL = "http://127.0.0.1:8123"
    call_command("seed_demo")
    capsys.readouterr()
    call_command("seed_demo")  # the second run too: make run prints it every time
    out = capsys.readouterr().out
    assert "http://127.0.0.1:8123/" in out
    # Every person (the teams' inactive system authors, alerts@<team>, cannot sign in and are not offered).
    for username in get_user_model().objects.filter(is_active=True).values_list("username", flat=True):
        assert username in out
    assert "alerts@" not in out
    assert "isdown-demo-2026" in out


# --- One port ----------------------------------------------------------------------------------------------
def test_site_url_follows_web_port_so_the_worker_publishes_to_this_instances_sandbox():
    result = settings_in_subprocess("settings.SITE_URL, settings.ISDOWN_API_URL", DEBUG="1", WEB_PORT="8123")
    assert result.stdout.split() == ["http://127.0.0.1:8123", "http://127.0.0.1:8123/sandbox"], result.stderr


def test_a_web_port_and_a_local_site_url_that_disagree_refuse_to_start():
    result = settings_in_subprocess("1", DEBUG="1", WEB_PORT="8123", SITE_URL="http://127.0.0.1:8000")
    assert result.returncode != 0
    assert "WEB_PORT" in result.stderr and "SITE_URL" in result.stderr


def test_the_development_server_listens_on_web_port():
    assert "${WEB_PORT:-8000}" in next(
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")
    )


# --- Favicon ----------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_favicon_is_served_to_anyone(client):
    # Before: a redirect to the login page. Now on to the static file (whitenoise serves it in production).
    response = client.get("/favicon.ico")
    assert response.status_code == 302
    assert response["Location"] == static("favicon.svg")
    assert Path(finders.find("favicon.svg")).read_text().startswith("<svg")


@pytest.mark.django_db
def test_every_page_names_its_icon(client, responder):
    assert b'rel="icon"' in client.get("/accounts/login/").content
    client.force_login(responder)
    assert b'rel="icon"' in client.get("/").content
