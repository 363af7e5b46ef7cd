"""Settings for isdown-admin: one module, every knob read from the environment.

Development defaults work on a machine with PostgreSQL and Redis on localhost. A bad value stops start-up
with an ImproperlyConfigured that names the variable. See README.md for the table of variables.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import dj_database_url
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from .limits import time_limit_problem, windows_problem
from .signing import KeyProblem, parse_private_key, read_private_key_file

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}")


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number; got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}; got {raw!r}")
    return value


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number; got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}; got {raw!r}")
    return value


def env_seconds_list(name: str, default: list[float]) -> list[float]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        values = [float(item) for item in raw.split(",") if item.strip()]
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be comma-separated seconds, e.g. 5,30,120,300; got {raw!r}") from None
    problem = windows_problem(name, values)
    if problem:
        raise ImproperlyConfigured(problem)
    return values


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_url(name: str, default: str, schemes: set[str]) -> str:
    raw = os.environ.get(name) or default
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not (parts.hostname or parts.path):
        raise ImproperlyConfigured(f"{name} must be a URL starting with one of {sorted(schemes)}; got {raw!r}")
    return raw


def email_settings(url: str) -> dict[str, object]:
    """Translate EMAIL_URL (console://, locmem://, smtp://user:pass@host:port, smtp+tls://, smtp+ssl://)."""
    parts = urlsplit(url)
    backends = {
        "console": "django.core.mail.backends.console.EmailBackend",
        "locmem": "django.core.mail.backends.locmem.EmailBackend",
        "smtp": "django.core.mail.backends.smtp.EmailBackend",
        "smtp+tls": "django.core.mail.backends.smtp.EmailBackend",
        "smtp+ssl": "django.core.mail.backends.smtp.EmailBackend",
    }
    if parts.scheme not in backends:
        raise ImproperlyConfigured(f"EMAIL_URL must start with one of {sorted(backends)}; got scheme {parts.scheme!r}")
    result: dict[str, object] = {"EMAIL_BACKEND": backends[parts.scheme]}
    if parts.scheme.startswith("smtp"):
        if not parts.hostname:
            raise ImproperlyConfigured("EMAIL_URL needs a host, e.g. smtp+tls://user:password@mail.example.com:587")
        try:
            port = parts.port
        except ValueError:
            raise ImproperlyConfigured("EMAIL_URL has an invalid port") from None
        result.update(
            EMAIL_HOST=parts.hostname,
            EMAIL_PORT=port or (465 if parts.scheme == "smtp+ssl" else 587 if parts.scheme == "smtp+tls" else 25),
            EMAIL_HOST_USER=unquote(parts.username or ""),
            EMAIL_HOST_PASSWORD=unquote(parts.password or ""),
            EMAIL_USE_TLS=parts.scheme == "smtp+tls",
            EMAIL_USE_SSL=parts.scheme == "smtp+ssl",
        )
    query = parse_qs(parts.query)
    if "from" in query:
        result["DEFAULT_FROM_EMAIL"] = query["from"][0]
    return result


# --- Core -----------------------------------------------------------------------------------------------
# Production is the default: development mode (DEBUG, the sandbox, demo data) only when asked for (make run does).
DEBUG = env_bool("DEBUG", False)
_DEV_SECRET_KEY = "dev-only-insecure-secret-key-do-not-use-in-production-0123456789"
SECRET_KEY = os.environ.get("SECRET_KEY") or ""
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (50+ random characters)")
    SECRET_KEY = _DEV_SECRET_KEY
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must list this site's host names when DEBUG is off")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
for _origin in CSRF_TRUSTED_ORIGINS:
    if "://" not in _origin:
        raise ImproperlyConfigured(f"CSRF_TRUSTED_ORIGINS entries need a scheme, e.g. https://{_origin}")
# The development server's port (Procfile, make run) and this app's own address follow each other: changing one
# alone sent the worker to another instance's sandbox.
WEB_PORT = env_int("WEB_PORT", 8000, minimum=1)
SITE_URL = env_str("SITE_URL", f"http://127.0.0.1:{WEB_PORT}").rstrip("/")
_site = urlsplit(SITE_URL)
if (
    os.environ.get("WEB_PORT")
    and _site.hostname in {"127.0.0.1", "localhost", "::1"}
    and (_site.port or {"http": 80, "https": 443}.get(_site.scheme)) != WEB_PORT
):
    raise ImproperlyConfigured(
        f"WEB_PORT={WEB_PORT} but SITE_URL={SITE_URL} points at another local port: set one of them (SITE_URL "
        "follows WEB_PORT), or both to the same port"
    )

INSTALLED_APPS = [
    "incidents.admin_site.AdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "csp",
    "axes",
    # Break-glass MFA: allauth.mfa's Authenticator (TOTP, recovery codes); the app keeps its own login views and URLs
    # (allauth's are not mounted). allauth.mfa's helpers import allauth.account's models, so that app is installed.
    "allauth.account",
    "allauth.mfa",
    "incidents",
    "sandbox",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "incidents.middleware.RequestIdMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "incidents.middleware.TimeZoneMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Required by allauth.account (installed for allauth.mfa); with allauth's URLs not mounted it stays out of the way.
    "allauth.account.middleware.AccountMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "incidents.middleware.NoStoreForSignedInMiddleware",
    # After auth, messages and htmx: it signs idle sessions out (polling is not activity).
    "incidents.middleware.SessionIdleTimeoutMiddleware",
    # axes must come last: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "isdown_admin.urls"
WSGI_APPLICATION = "isdown_admin.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "incidents.context_processors.navigation",
            ],
        },
    },
]

# --- Database and Redis -----------------------------------------------------------------------------------
# The app's own role (least privilege); migrations run with the owner's URL instead (make migrate, compose).
DATABASE_URL = env_url("DATABASE_URL", "postgres://isdown_app@127.0.0.1:5432/isdown_admin", {"postgres", "postgresql"})
# The role the owner grants the app's privileges to when it migrates (migration 0005, manage.py grant_app_role).
DATABASE_APP_ROLE = env_str("DATABASE_APP_ROLE", "isdown_app")
# Persistent connections only where the number of threads is bounded (gunicorn sync workers: set it there). Off by
# default: the development server runs a thread per browser connection, and each held a connection while idle.
DATABASE_CONN_MAX_AGE = env_int("DATABASE_CONN_MAX_AGE", 0)
try:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=DATABASE_CONN_MAX_AGE, conn_health_checks=DATABASE_CONN_MAX_AGE > 0
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
# A Celery worker process runs one task at a time (its threads are bounded), so it keeps its connection between
# tasks, health-checked at the start of each one (isdown_admin/celery.py applies this in workers only).
WORKER_DATABASE_CONN_MAX_AGE = env_int("WORKER_DATABASE_CONN_MAX_AGE", 300)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", {"redis", "rediss"})

# --- Auth, sessions, lockout ------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "incidents:dashboard"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = 0.25  # hours: 15 minutes
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
# A lockout lasts 15 minutes from the failure that locked, however often the door is tried meanwhile (those
# tries are refused and not counted, and the audit log gets one event per lockout).
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Reverse proxies in front of the app: the client is the PROXY_COUNT-th address from the right of
# X-Forwarded-For (django-ipware parses it); with 0 the header is never read. Lockouts and the audit log agree.
PROXY_COUNT = env_int("PROXY_COUNT", 0)
AXES_CLIENT_IP_CALLABLE = "incidents.middleware.client_ip"

SESSION_COOKIE_AGE = 8 * 60 * 60  # from sign-in, however active (incidents.middleware.SessionIdleTimeoutMiddleware)
# Seconds without activity before a session is signed out; background polling is not activity.
SESSION_IDLE_TIMEOUT = env_int("SESSION_IDLE_TIMEOUT", 30 * 60, minimum=60)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True  # the token travels in <body hx-headers>, never read from the cookie

# --- Security headers -------------------------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Strict CSP: nothing inline, scripts and styles only from our own origin; a nonce where one is needed.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [NONE],
        "script-src": [SELF, NONCE],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
        "base-uri": [NONE],
    },
}

# --- Static files -----------------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

# --- Email ------------------------------------------------------------------------------------------------
EMAIL_URL = env_str("EMAIL_URL", "console://")
globals().update(email_settings(EMAIL_URL))
DEFAULT_FROM_EMAIL = globals().get("DEFAULT_FROM_EMAIL") or env_str("DEFAULT_FROM_EMAIL", "isdown-admin@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- IsDown and the sandbox -------------------------------------------------------------------------------
ISDOWN_API_KEY = os.environ.get("ISDOWN_API_KEY") or ""
if not DEBUG and not ISDOWN_API_KEY:
    raise ImproperlyConfigured(
        "ISDOWN_API_KEY must be set when DEBUG is off: production publishes to IsDown, never to the sandbox"
    )
# The sandbox emulates IsDown for development. It is decided here, from the environment (the test runner turns
# settings.DEBUG off later, and the tests still need it), and it never runs in production.
SANDBOX_ENABLED = env_bool("SANDBOX_ENABLED", DEBUG and not ISDOWN_API_KEY)
if SANDBOX_ENABLED and not DEBUG:
    raise ImproperlyConfigured("SANDBOX_ENABLED needs DEBUG=1: the IsDown sandbox is for development only")
# Not a published default: anyone who knows the key can write to the sandbox's incidents.
SANDBOX_API_KEY = env_str(
    "SANDBOX_API_KEY", hmac.new(SECRET_KEY.encode(), b"isdown-admin sandbox api key", "sha256").hexdigest()[:32]
)
# The sandbox's list call answers this many incidents a page (IsDown's pagination is undocumented).
SANDBOX_PAGE_SIZE = env_int("SANDBOX_PAGE_SIZE", 25, minimum=1)
_isdown_default = f"{SITE_URL}/sandbox" if not ISDOWN_API_KEY else "https://isdown.app"
ISDOWN_API_URL = env_url("ISDOWN_API_URL", _isdown_default, {"http", "https"}).rstrip("/")
if not DEBUG and not ISDOWN_API_URL.startswith("https://"):
    raise ImproperlyConfigured("ISDOWN_API_URL must use https:// when DEBUG is off")
# Whether the app publishes to its own sandbox (every page then says so).
PUBLISHES_TO_SANDBOX = not ISDOWN_API_KEY
# The whole of one IsDown call, DNS included: a call that has not started when it runs out is never started.
ISDOWN_TIMEOUT = env_float("ISDOWN_TIMEOUT", 10.0, minimum=0.1)
# Whether IsDown's status page renders descriptions as Markdown: IsDown does not document it, so plain text by
# default. Either way the text is sent as typed; the setting decides what the form says and how the preview
# (and the review) shows it (incidents/templatetags/status_text.py: Markdown rendered, then sanitised by nh3).
ISDOWN_MARKDOWN = env_bool("ISDOWN_MARKDOWN", False)
# The key the client sends: the real one, or the sandbox's when we are talking to the sandbox.
ISDOWN_EFFECTIVE_API_KEY = ISDOWN_API_KEY or SANDBOX_API_KEY

# --- Publishing and sync tunables ---------------------------------------------------------------------------
PUBLISH_MAX_ATTEMPTS = env_int("PUBLISH_MAX_ATTEMPTS", 8, minimum=1)
PUBLISH_BACKOFF_BASE = env_float("PUBLISH_BACKOFF_BASE", 2.0, minimum=0.0)
PUBLISH_BACKOFF_CAP = env_float("PUBLISH_BACKOFF_CAP", 300.0, minimum=0.0)
PUBLISH_LEASE_SECONDS = env_float("PUBLISH_LEASE_SECONDS", 60.0, minimum=1.0)
# After an unknown outcome, IsDown is looked at at each of these offsets (seconds) before anything is sent
# again: a request still in flight behind a proxy must have had the time to land before its absence is believed.
PUBLISH_RECONCILE_WINDOWS = env_seconds_list("PUBLISH_RECONCILE_WINDOWS", [5.0, 30.0, 120.0, 300.0])
# After a resend, IsDown is looked at at these offsets from publishing, for a late twin.
PUBLISH_WATCH_WINDOWS = env_seconds_list("PUBLISH_WATCH_WINDOWS", PUBLISH_RECONCILE_WINDOWS)
# Checks that keep failing for this long (IsDown down, not a blip) go to a human.
PUBLISH_CHECK_PATIENCE = env_float("PUBLISH_CHECK_PATIENCE", 1800.0, minimum=0.0)
SWEEP_INTERVAL = env_float("SWEEP_INTERVAL", 15.0, minimum=0.1)
SYNC_INTERVAL = env_float("SYNC_INTERVAL", 60.0, minimum=1.0)
# Reminders (issue 12 §5): how often beat looks for overdue updates and reviews waiting too long.
REMINDER_INTERVAL = env_float("REMINDER_INTERVAL", 60.0, minimum=1.0)

# Break-glass MFA (issue 12 §4): allauth.mfa's TOTP and recovery codes, checked by incidents/mfa.py. When on, an
# approver without an authenticator app is sent to enrol before approving (check --deploy warns when it is off).
MFA_REQUIRED_FOR_APPROVERS = env_bool("MFA_REQUIRED_FOR_APPROVERS", False)
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = env_str("MFA_TOTP_ISSUER", "isdown-admin")
# One 30-second step either side: a phone's clock a little off still works; an older code never does.
MFA_TOTP_TOLERANCE = 1
SYNC_CONCURRENCY = env_int("SYNC_CONCURRENCY", 4, minimum=1)
# Redis redelivers an unacknowledged message after this many seconds; every delay stays below it.
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=60)
if PUBLISH_BACKOFF_CAP >= CELERY_VISIBILITY_TIMEOUT:
    raise ImproperlyConfigured("PUBLISH_BACKOFF_CAP must be below CELERY_VISIBILITY_TIMEOUT")

# --- Drafts from alerts (issue 12 §6) ------------------------------------------------------------------------
# Requests a team's alert webhook accepts per window (those with the right token and the rest are counted apart,
# so someone without the token cannot use up the team's allowance); the counters live in Postgres.
ALERTS_RATE_LIMIT = env_int("ALERTS_RATE_LIMIT", 60, minimum=1)
ALERTS_RATE_WINDOW = env_int("ALERTS_RATE_WINDOW", 60, minimum=1)
# The largest body the webhook reads (Alertmanager groups many alerts into one request).
ALERTS_MAX_BODY_BYTES = env_int("ALERTS_MAX_BODY_BYTES", 256 * 1024, minimum=1024)

# --- Notifications and heartbeats ---------------------------------------------------------------------------
NOTIFY_MAX_ATTEMPTS = env_int("NOTIFY_MAX_ATTEMPTS", 10, minimum=1)
NOTIFY_BACKOFF_BASE = env_float("NOTIFY_BACKOFF_BASE", 30.0, minimum=0.0)
NOTIFY_BACKOFF_CAP = env_float("NOTIFY_BACKOFF_CAP", 1800.0, minimum=0.0)
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0, minimum=0.1)
HEARTBEAT_INTERVAL = env_float("HEARTBEAT_INTERVAL", 15.0, minimum=0.1)
HEARTBEAT_SILENT_AFTER = env_float("HEARTBEAT_SILENT_AFTER", 120.0, minimum=1.0)
if HEARTBEAT_SILENT_AFTER <= HEARTBEAT_INTERVAL:
    raise ImproperlyConfigured("HEARTBEAT_SILENT_AFTER must exceed HEARTBEAT_INTERVAL")

# --- Audit checkpoints (signed heads of the chain) ----------------------------------------------------------
# The Ed25519 key that signs checkpoints lives outside the database: AUDIT_SIGNING_KEY (PEM or base64, a secret:
# environment only) or AUDIT_SIGNING_KEY_FILE (a path). Production refuses to start without one; development uses
# var/audit-signing-key.pem (make run writes it; created on first use if missing).
AUDIT_SIGNING_KEY = os.environ.get("AUDIT_SIGNING_KEY") or ""
AUDIT_SIGNING_KEY_FILE = os.environ.get("AUDIT_SIGNING_KEY_FILE") or ""
AUDIT_SIGNING_KEY_IS_DEV_DEFAULT = False
if AUDIT_SIGNING_KEY and AUDIT_SIGNING_KEY_FILE:
    raise ImproperlyConfigured("Set one of AUDIT_SIGNING_KEY and AUDIT_SIGNING_KEY_FILE, not both")
if AUDIT_SIGNING_KEY:
    try:
        parse_private_key(AUDIT_SIGNING_KEY)
    except KeyProblem as exc:
        raise ImproperlyConfigured(f"AUDIT_SIGNING_KEY is not an Ed25519 private key: {exc}") from None
elif AUDIT_SIGNING_KEY_FILE:
    try:
        read_private_key_file(AUDIT_SIGNING_KEY_FILE)
    except KeyProblem as exc:
        raise ImproperlyConfigured(f"AUDIT_SIGNING_KEY_FILE: {exc}") from None
elif DEBUG:
    AUDIT_SIGNING_KEY_FILE = str(BASE_DIR / "var" / "audit-signing-key.pem")
    AUDIT_SIGNING_KEY_IS_DEV_DEFAULT = True
else:
    raise ImproperlyConfigured(
        "AUDIT_SIGNING_KEY or AUDIT_SIGNING_KEY_FILE must be set when DEBUG is off: audit checkpoints are signed "
        "with a key kept outside the database (python -m isdown_admin.signing new-key makes one)"
    )
# Every checkpoint is also appended here (JSON Lines), outside the database. Empty: the database only (check
# --deploy warns).
# One development sink per database (make test, make chaos and make run each have their own).
_DEV_SINK = str(BASE_DIR / "var" / f"audit-checkpoints-{DATABASES['default']['NAME']}.jsonl")
AUDIT_CHECKPOINT_SINK = env_str("AUDIT_CHECKPOINT_SINK", _DEV_SINK if DEBUG else "")
AUDIT_CHECKPOINT_INTERVAL = env_float("AUDIT_CHECKPOINT_INTERVAL", 300.0, minimum=1.0)
# Exports of more events than this are built into a file by a worker (a request would outlive gunicorn's timeout);
# the file is written to AUDIT_EXPORT_DIR, which web and worker share.
AUDIT_EXPORT_STREAM_MAX_ROWS = env_int("AUDIT_EXPORT_STREAM_MAX_ROWS", 200_000, minimum=0)
# Logs longer than this are verified by a worker, with progress on the page, instead of inside the request.
AUDIT_VERIFY_INLINE_MAX_EVENTS = env_int("AUDIT_VERIFY_INLINE_MAX_EVENTS", 100_000, minimum=0)
# The background verification checks segments of the chain in this many processes (one core each).
AUDIT_VERIFY_PROCESSES = env_int("AUDIT_VERIFY_PROCESSES", os.cpu_count() or 1, minimum=1)
AUDIT_EXPORT_DIR = env_str("AUDIT_EXPORT_DIR", str(BASE_DIR / "var" / "audit-exports"))
# Appends do not serialise the app (audit.py): record() writes an entry in the caller's transaction and the sealer
# chains committed entries into the log right after each commit (AUDIT_SEAL_ON_COMMIT) and from beat every
# AUDIT_SEAL_INTERVAL seconds. AUDIT_SEAL_INLINE=1 seals inside the caller's transaction under one lock held to its
# commit instead (serialising: the previous behaviour; the test suite uses it to read its events at once).
AUDIT_SEAL_INLINE = env_bool("AUDIT_SEAL_INLINE", False)
AUDIT_SEAL_ON_COMMIT = env_bool("AUDIT_SEAL_ON_COMMIT", True)
AUDIT_SEAL_INTERVAL = env_float("AUDIT_SEAL_INTERVAL", 1.0, minimum=0.1)

# --- Celery -----------------------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes every database connection before and after each task unless this is set; workers
# recycle connections by WORKER_DATABASE_CONN_MAX_AGE and on errors instead (isdown_admin/celery.py).
CELERY_DB_REUSE_MAX = 1_000_000
# A task is stopped (soft, then hard) before a publication's lease runs out, and has time for one whole call.
CELERY_TASK_SOFT_TIME_LIMIT = env_float("CELERY_TASK_SOFT_TIME_LIMIT", round(PUBLISH_LEASE_SECONDS * 2 / 3, 1))
CELERY_TASK_TIME_LIMIT = env_float(
    "CELERY_TASK_TIME_LIMIT", round((CELERY_TASK_SOFT_TIME_LIMIT + PUBLISH_LEASE_SECONDS) / 2, 1)
)
_limits = time_limit_problem(
    soft=CELERY_TASK_SOFT_TIME_LIMIT, hard=CELERY_TASK_TIME_LIMIT, lease=PUBLISH_LEASE_SECONDS, call=ISDOWN_TIMEOUT
)
if _limits:
    raise ImproperlyConfigured(f"Unsafe timing settings: {_limits}")
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_DEFAULT_QUEUE", "default")
CELERY_PUBLISH_QUEUE = env_str("CELERY_PUBLISH_QUEUE", "publish")
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ROUTES = {"incidents.tasks.publish": {"queue": CELERY_PUBLISH_QUEUE}}
CELERY_BEAT_SCHEDULER = "incidents.heartbeat:Scheduler"
CELERY_BEAT_SCHEDULE = {
    "sweep-publications": {"task": "incidents.tasks.sweep", "schedule": SWEEP_INTERVAL},
    "deliver-notifications": {"task": "incidents.tasks.deliver_notifications", "schedule": max(SWEEP_INTERVAL, 5.0)},
    "sync-open-incidents": {"task": "incidents.tasks.sync_open_incidents", "schedule": SYNC_INTERVAL},
    "check-reminders": {"task": "incidents.tasks.check_reminders", "schedule": REMINDER_INTERVAL},
    "checkpoint-audit-log": {"task": "incidents.tasks.checkpoint_audit_log", "schedule": AUDIT_CHECKPOINT_INTERVAL},
    "seal-audit-log": {"task": "incidents.tasks.seal_audit_log", "schedule": AUDIT_SEAL_INTERVAL},
}

# Error pages and error emails never show secrets or *_URL values (they carry passwords).
DEFAULT_EXCEPTION_REPORTER_FILTER = "isdown_admin.errors.SecretsFilter"

# --- Logging ----------------------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
    },
}
