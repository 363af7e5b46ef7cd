"""Give every request an id and make ip, user agent and request id available to the audit log."""

from __future__ import annotations

import uuid

from . import audit


def client_ip(request) -> str:
    from axes.helpers import get_client_ip_address

    return get_client_ip_address(request) or ""


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
        request.request_id = request_id
        audit.set_request_context(
            {
                "ip": client_ip(request),
                "user_agent": request.headers.get("User-Agent", "")[:300],
                "request_id": request_id,
            }
        )
        try:
            response = self.get_response(request)
        finally:
            audit.set_request_context(None)
        response["X-Request-Id"] = request_id
        return response
