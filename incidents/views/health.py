"""/healthz: is the database reachable, is Redis reachable, are a worker and beat alive. No login: load
balancers and monitors call it.

The status code answers "can this web process serve?" (503 when the database or Redis is down). Whether
anything is being published is in the body (``worker``, ``beat``: "ok", or how long they have been silent),
for a monitor to alert on: a silent worker must not take the web out of a load balancer's rotation."""

from __future__ import annotations

import redis
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .. import heartbeat


def check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as exc:  # any failure means "down"; the reason is for the operator
        return f"down: {type(exc).__name__}"


def check_redis() -> str:
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
        return "ok"
    except Exception as exc:
        return f"down: {type(exc).__name__}"


@login_not_required
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"db": check_database(), "redis": check_redis()}
    healthy = all(value == "ok" for value in checks.values())
    if checks["db"] == "ok":
        status = heartbeat.status()
        checks["worker"] = status.describe(status.worker_seen_at)
        checks["beat"] = status.describe(status.beat_seen_at)
    return JsonResponse(checks, status=200 if healthy else 503)
