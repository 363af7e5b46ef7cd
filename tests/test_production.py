"""Production that is safe by default (issue 9, items 1 and 3): the settings refuse unsafe configs, the deploy
checks fail on them and pass on the documented one, error pages show no secrets, and the image's own commands
(Dockerfile: collectstatic, then gunicorn) serve the login page, static files and a signed-in page with DEBUG=0
behind a TLS proxy, as the app's least-privilege role.

Every production process here is a subprocess with an environment of its own: the test process itself runs in
development mode (tests/testenv.py).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.db import connection

from isdown_admin import preflight
from isdown_admin.signing import new_private_b64

from .conftest import APP_URL, OWNER_URL
from .factories import UserFactory
from .waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED = ROOT / "deploy" / "production.env.example"
HOST = "admin.test"


def documented_env() -> dict[str, str]:
    values = {}
    for line in DOCUMENTED.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def production_env(**overrides: str) -> dict[str, str]:
    """The documented production environment, pointed at the test database as the app's role."""
    inherited = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "PYTHONPATH", "TMPDIR"}}
    database = connection.settings_dict["NAME"]
    env = {
        **inherited,
        **documented_env(),
        "SECRET_KEY": secrets.token_urlsafe(64),
        "AUDIT_SIGNING_KEY": new_private_b64(),
        "ALLOWED_HOSTS": f"{HOST},127.0.0.1",
        "CSRF_TRUSTED_ORIGINS": f"https://{HOST}",
        "SITE_URL": f"https://{HOST}",
        "DATABASE_URL": re.sub(r"/[^/]*$", f"/{database}", APP_URL),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "DJANGO_SETTINGS_MODULE": "isdown_admin.settings",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


# --- Settings that refuse -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("unsafe", "refusal"),
    [
        ({"DEBUG": None}, None),  # the documented config with DEBUG unset: production, accepted
        ({"DEBUG": None, "ISDOWN_API_KEY": None}, "ISDOWN_API_KEY must be set when DEBUG is off"),
        ({"SANDBOX_ENABLED": "1"}, "SANDBOX_ENABLED needs DEBUG=1"),
        ({"SECRET_KEY": None}, "SECRET_KEY must be set when DEBUG is off"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS must list"),
        ({"ISDOWN_API_URL": "http://isdown.example"}, "ISDOWN_API_URL must use https://"),
        ({"CELERY_TASK_SOFT_TIME_LIMIT": "90"}, "soft time limit"),
        ({"AUDIT_SIGNING_KEY": None}, "AUDIT_SIGNING_KEY or AUDIT_SIGNING_KEY_FILE must be set when DEBUG is off"),
        ({"AUDIT_SIGNING_KEY": "not-a-key"}, "AUDIT_SIGNING_KEY is not an Ed25519 private key"),
        ({"AUDIT_SIGNING_KEY": None, "AUDIT_SIGNING_KEY_FILE": "/nonexistent/key.pem"}, "AUDIT_SIGNING_KEY_FILE"),
    ],
)
def test_production_settings_refuse_unsafe_configs_at_start_up(transactional_db, unsafe, refusal):
    env = production_env(**unsafe)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if refusal is None:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "False"
    else:
        assert result.returncode != 0 and refusal in result.stderr, result.stderr[-2000:]


def test_development_mounts_the_sandbox_behind_a_key_that_is_not_published():
    from django.conf import settings

    assert settings.SANDBOX_ENABLED and settings.PUBLISHES_TO_SANDBOX
    assert settings.SANDBOX_API_KEY != "sandbox-key" and len(settings.SANDBOX_API_KEY) >= 32


# --- check --deploy --------------------------------------------------------------------------------------------
def test_the_documented_production_config_passes_every_deploy_check(transactional_db):
    result = manage("check", "--deploy", "--database", "default", "--fail-level", "WARNING", env=production_env())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("unsafe", "finding"),
    [
        ({"DEBUG": "1"}, "security.W018"),
        ({"EMAIL_URL": "console://"}, "isdown.W001"),
        ({"MFA_REQUIRED_FOR_APPROVERS": "0"}, "isdown.W004"),
        ({"DATABASE_URL": "owner"}, "isdown.E004"),
        ({"DATABASE_URL": "superuser"}, "isdown.E004"),
        ({"SECURE_HSTS_SECONDS": "0"}, "security.W004"),
        ({"AUDIT_CHECKPOINT_SINK": ""}, "isdown.W005"),
    ],
)
def test_an_unsafe_production_config_fails_the_deploy_check(transactional_db, unsafe, finding):
    database = connection.settings_dict["NAME"]
    roles = {
        "owner": re.sub(r"/[^/]*$", f"/{database}", OWNER_URL),
        "superuser": f"postgres://root@127.0.0.1:5432/{database}",
    }
    env = production_env(**{k: roles.get(v, v) for k, v in unsafe.items()})
    result = manage("check", "--deploy", "--database", "default", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0 and finding in result.stdout + result.stderr, result.stdout + result.stderr


# --- Error pages --------------------------------------------------------------------------------------------
def _fail_inside_a_request() -> None:
    raise RuntimeError("boom")


def test_the_debug_error_page_shows_no_url_password_or_key(rf, settings):
    """With DEBUG on, Django's error page lists settings and the environment: none of their secrets."""
    from django.views.debug import technical_500_response

    settings.DATABASE_URL = f"postgres://app:{secrets.token_hex(8)}@db.internal/isdown"
    settings.REDIS_URL = f"redis://:{secrets.token_hex(8)}@redis.internal:6379/0"
    settings.EMAIL_HOST_PASSWORD = secrets.token_hex(8)
    settings.EMAIL_URL = f"smtp+tls://mailer:{settings.EMAIL_HOST_PASSWORD}@mail.example.com:587"
    settings.ISDOWN_API_KEY = secrets.token_hex(8)
    request = rf.get("/boom", HTTP_AUTHORIZATION=f"Bearer {settings.ISDOWN_API_KEY}")
    request.META["DATABASE_URL"] = settings.DATABASE_URL  # runserver puts the environment into META
    try:
        _fail_inside_a_request()
    except RuntimeError:
        html = technical_500_response(request, *sys.exc_info()).content.decode()
    assert "RuntimeError" in html and "boom" in html  # it is the error page
    for secret in (
        settings.DATABASE_URL.split(":")[2].split("@")[0],
        settings.REDIS_URL.split(":")[2].split("@")[0],
        settings.EMAIL_HOST_PASSWORD,
        settings.ISDOWN_API_KEY,
    ):
        assert secret not in html


# --- The image's commands, run here ------------------------------------------------------------------------
def dockerfile() -> tuple[dict[str, str], str, list[str]]:
    """The Dockerfile's ENV, its collectstatic RUN step (with its build-only variables) and its CMD."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", text, flags=re.MULTILINE):
        env.update(dict(item.split("=", 1) for item in shlex.split(line)))
    build = next(line for line in re.findall(r"^RUN (.+)$", text, flags=re.MULTILINE) if "collectstatic" in line)
    command = re.search(r"^CMD (\[.+\])$", text, flags=re.MULTILINE).group(1)
    return env, build, [part.strip('" ') for part in command.strip("[]").split(",")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_image_is_production_by_default_and_builds_static_files_for_it():
    env, build, _ = dockerfile()
    assert env["DEBUG"] == "0"
    assert "DEBUG=1" not in build and "collectstatic" in build


@pytest.fixture
def production_server(transactional_db, tmp_path):
    """The Dockerfile's build step and command, run here: collectstatic as the image does it, then gunicorn with
    the documented production environment, behind a (pretend) TLS proxy, as the app's role."""
    image_env, build, command = dockerfile()
    static_root = tmp_path / "static"
    build_env = {**production_env(), **image_env, "STATIC_ROOT": str(static_root)}
    for name in ("SECRET_KEY", "ALLOWED_HOSTS", "ISDOWN_API_KEY", "AUDIT_SIGNING_KEY"):
        build_env.pop(name)  # the build step brings its own, build-only values
    built = subprocess.run(["sh", "-c", build], cwd=ROOT, env=build_env, capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stdout + built.stderr
    assert (static_root / "staticfiles.json").exists()

    port = free_port()
    bind = command.index("--bind")
    command[bind + 1] = f"127.0.0.1:{port}"
    command[0] = str(Path(sys.executable).with_name("gunicorn"))
    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**production_env(), **image_env, "STATIC_ROOT": str(static_root)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def answering_or_exited() -> bool:
        if server.poll() is not None:
            return True
        try:
            return bool(httpx.get(f"{base}/healthz", headers={"Host": HOST, "X-Forwarded-Proto": "https"}).status_code)
        except httpx.TransportError:
            return False

    def gunicorn_log() -> str:
        return (tmp_path / "gunicorn.log").read_text()[-4000:]

    wait_for(answering_or_exited, timeout=60, interval=0.2, what="gunicorn to answer", context=gunicorn_log)
    if server.poll() is not None:
        pytest.fail("gunicorn did not start:\n" + gunicorn_log())
    yield base
    server.terminate()
    server.wait(timeout=30)
    log.close()


def test_gunicorn_with_production_settings_serves_login_static_files_and_a_signed_in_page(
    production_server, real_password_hashing
):
    proxy = {"Host": HOST, "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    UserFactory(username="prod-user", password="a-long-password-for-prod")
    with httpx.Client(base_url=production_server, headers=proxy) as client:
        assert client.get("/accounts/login/", headers={"X-Forwarded-Proto": "http"}).status_code == 301  # to https

        login = client.get("/accounts/login/")
        assert login.status_code == 200 and "Strict-Transport-Security" in login.headers
        assert "content-security-policy" in login.headers
        stylesheet = re.search(r'href="(/static/[^"]+\.[0-9a-f]{12}\.css)"', login.text).group(1)
        css = client.get(stylesheet)
        assert css.status_code == 200 and "max-age=315360000" in css.headers["Cache-Control"]

        # Cookies are Secure: behind the proxy the browser sends them; here they are sent by hand.
        cookies = {c.name: c.value for c in client.cookies.jar}
        client.cookies.clear()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
        signed_in = client.post(
            "/accounts/login/",
            data={"username": "prod-user", "password": "a-long-password-for-prod", "csrfmiddlewaretoken": token},
            headers={"Referer": f"https://{HOST}/accounts/login/", "Cookie": f"csrftoken={cookies['csrftoken']}"},
        )
        assert signed_in.status_code == 302, signed_in.text[-2000:]
        session = signed_in.cookies.get("sessionid") or re.search(
            r"sessionid=([^;]+)", signed_in.headers["set-cookie"]
        ).group(1)
        dashboard = client.get("/", headers={"Cookie": f"sessionid={session}"})
        assert dashboard.status_code == 200 and "Dashboard" in dashboard.text
        assert "SANDBOX" not in dashboard.text
        assert client.get("/sandbox/", headers={"Cookie": f"sessionid={session}"}).status_code == 404


def test_preflight_creates_both_roles_with_no_more_than_they_need():
    with preflight.connect(preflight.urls()[2]) as admin:
        rows = {
            name: tuple(flags)
            for name, *flags in admin.execute(
                "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = ANY(%s)",
                [[preflight.params(APP_URL)["user"], preflight.params(OWNER_URL)["user"]]],
            ).fetchall()
        }
    assert rows[preflight.params(APP_URL)["user"]] == (False, False, False)
    assert rows[preflight.params(OWNER_URL)["user"]] == (False, False, True)  # the tests create their database


def test_a_sandbox_mounted_next_to_a_real_key_still_says_so_on_every_page(settings, as_user, responder):
    settings.PUBLISHES_TO_SANDBOX, settings.SANDBOX_ENABLED = False, True
    page = as_user(responder).get("/").content.decode()
    assert "SANDBOX mounted at /sandbox/" in page and "nothing reaches IsDown" not in page
    settings.SANDBOX_ENABLED = False
    assert "SANDBOX" not in as_user(responder).get("/").content.decode()
