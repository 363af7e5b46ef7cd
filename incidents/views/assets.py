"""Files browsers ask for at fixed addresses, before anyone signs in: sent on to the static file."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponseRedirect
from django.templatetags.static import static
from django.views.decorators.http import require_safe


@login_not_required
@require_safe
def favicon(request: HttpRequest) -> HttpResponseRedirect:
    # Browsers ask for /favicon.ico whatever the page says; without this it was a redirect to the login page.
    return HttpResponseRedirect(static("favicon.svg"))
