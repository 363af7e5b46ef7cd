"""Settings, deploy checks, seed_demo, /healthz and the preflight: what an operator touches first."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from incidents import heartbeat
from incidents.models import AuditEvent, Membership, Service, SystemMark, Team
from isdown_admin import preflight
from isdown_admin.signing import new_private_b64

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "k3y-" + "x9Q2m7Rz4Lp8Wv1Ns6Bt3Hc5Jd0Fg2Ka7Ye4Uo9Ii1" * 2,
    "ALLOWED_HOSTS": "status-admin.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://status-admin.example.com",
    "ISDOWN_API_KEY": "a-real-key",
    "ISDOWN_API_URL": "https://isdown.app",
    "EMAIL_URL": "smtp+tls://mailer:secret@mail.example.com:587",
    "AUDIT_SIGNING_KEY": new_private_b64(),
    "AUDIT_CHECKPOINT_SINK": "/var/lib/isdown-admin/audit-checkpoints.jsonl",
    "MFA_REQUIRED_FOR_APPROVERS": "1",
}


def manage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # Only the variables a deployment would have: nothing test-only (e.g. DJANGO_ALLOW_ASYNC_UNSAFE) leaks in.
    full_env = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV and k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_with_the_production_variables():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_in_development_settings():
    # The same check is not a rubber stamp: development settings do draw warnings.
    result = manage("check", "--deploy", "--fail-level", "WARNING", env={"DEBUG": "1"})
    assert result.returncode != 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEBUG", "maybe"),
        ("DATABASE_URL", "mysql://root@localhost/x"),
        ("REDIS_URL", "http://localhost:6379"),
        ("PUBLISH_MAX_ATTEMPTS", "many"),
        ("EMAIL_URL", "carrier-pigeon://coop"),
        ("ISDOWN_TIMEOUT", "-1"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(variable, value):
    result = manage("check", env={"DEBUG": "1", variable: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr


def test_production_without_secret_key_refuses_to_start():
    env = dict(PRODUCTION_ENV)
    env.pop("SECRET_KEY")
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


@pytest.mark.django_db
def test_seed_demo_creates_the_demo_world_and_a_second_run_changes_nothing(capsys, settings):
    settings.DEBUG = True  # pytest-django turns DEBUG off; seed_demo is for development
    call_command("seed_demo")
    first = capsys.readouterr().out
    assert "Demo users created" in first
    snapshot = (
        list(Team.objects.values_list("name", flat=True)),
        list(Service.objects.values_list("name", "isdown_service_id", "team__name")),
        list(Membership.objects.values_list("user__username", "team__name", "role")),
        list(get_user_model().objects.values_list("username", "password")),
        AuditEvent.objects.count(),
    )
    assert set(snapshot[0]) == {"Platform", "Data"}
    assert ("API", 1001, "Platform") in snapshot[1]
    assert ("Pipeline", 2001, "Data") in snapshot[1]
    assert ("data-responder", "Data", "responder") in snapshot[2]
    call_command("seed_demo")
    second = capsys.readouterr().out
    assert "Demo users created" not in second and "nothing changed" in second
    assert snapshot == (
        list(Team.objects.values_list("name", flat=True)),
        list(Service.objects.values_list("name", "isdown_service_id", "team__name")),
        list(Membership.objects.values_list("user__username", "team__name", "role")),
        list(get_user_model().objects.values_list("username", "password")),
        AuditEvent.objects.count(),
    )


def test_seed_demo_refuses_with_debug_off_unless_forced():
    result = manage("seed_demo", env=PRODUCTION_ENV)
    assert result.returncode != 0
    assert "--force" in result.stderr


@pytest.mark.django_db
def test_healthz_reports_db_and_redis_ok_and_a_worker_and_beat_never_seen(client):
    response = client.get("/healthz")
    # Nobody publishing is for a monitor to alert on; the web itself can still serve.
    assert response.status_code == 200
    assert response.json() == {"db": "ok", "redis": "ok", "worker": "never seen", "beat": "never seen"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_healthz_says_ok_for_a_worker_and_beat_that_marked_lately(client):
    heartbeat.mark(f"{heartbeat.WORKER_PREFIX}celery@host-1")
    heartbeat.mark(heartbeat.BEAT)
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"db": "ok", "redis": "ok", "worker": "ok", "beat": "ok"}


@pytest.mark.django_db
def test_healthz_says_how_long_a_silent_worker_has_been_silent_and_still_answers_200(client, settings):
    long_ago = timezone.now() - timedelta(seconds=settings.HEARTBEAT_SILENT_AFTER + 600)
    SystemMark.objects.create(name=f"{heartbeat.WORKER_PREFIX}celery@gone", at=long_ago)
    heartbeat.mark(heartbeat.BEAT)
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["worker"].startswith("silent for ")
    assert int(body["worker"].split()[2]) >= settings.HEARTBEAT_SILENT_AFTER + 600
    assert body["beat"] == "ok"


@pytest.mark.django_db
def test_healthz_answers_503_naming_redis_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["db"] == "ok"
    assert body["redis"].startswith("down")
    # The database still answers, so the heartbeats are still reported.
    assert (body["worker"], body["beat"]) == ("never seen", "never seen")


def test_preflight_stops_at_once_saying_what_to_start():
    env = dict(os.environ)
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    result = subprocess.run(
        [sys.executable, "-m", "isdown_admin.preflight"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "cannot reach Redis" in result.stderr
    assert "docker compose up -d db redis" in result.stderr


def test_preflight_create_db_names_a_missing_role_instead_of_failing_with_a_traceback(capsys):
    # Found by mypy: a URL without a user left the role None, and psycopg refused it with a TypeError.
    without_role = "postgres://127.0.0.1:5432/isdown_admin"
    with pytest.raises(SystemExit) as stopped:
        preflight.create_roles_and_database(without_role, preflight.with_user(without_role, "o"), "postgres://x@y/z")
    assert stopped.value.code == 2
    assert "must each name a role" in capsys.readouterr().err


def test_compose_file_and_makefile_run_the_same_worker_and_beat_commands():
    makefile = (ROOT / "Makefile").read_text()
    compose = (ROOT / "docker-compose.yml").read_text()
    procfile = (ROOT / "Procfile").read_text()
    for name in ("WORKER_CMD", "BEAT_CMD"):
        line = next(line for line in makefile.splitlines() if line.startswith(f"{name} :="))
        command = line.split(":=", 1)[1].strip()
        assert command in compose, f"{name} differs in docker-compose.yml"
        assert command in procfile, f"{name} differs in Procfile"
