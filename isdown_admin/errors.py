"""What an error page or an error email may show of the settings and the request: never a secret, and never a
``*_URL`` (a database, Redis or SMTP URL carries its password)."""

from __future__ import annotations

import re

from django.views.debug import SafeExceptionReporterFilter


class SecretsFilter(SafeExceptionReporterFilter):
    hidden_settings = re.compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|AUTHORIZATION|URL|DSN|DATABASES|EMAIL_HOST_USER",
        flags=re.IGNORECASE,
    )
