"""The app's settings with the bench's URLs (bench_urls.py: the app's, plus a bare template view to compare with),
run as production runs: ``DEBUG`` off (no query log, no template debugging; the cached template loader as always).
The start-up checks of a production environment ran (or not) when settings.py was imported with the bench's own
environment; only the request-time behaviour of ``DEBUG`` is switched off here."""

from isdown_admin.settings import *  # noqa: F403

ROOT_URLCONF = "tests.bench.bench_urls"
DEBUG = False
for _engine in TEMPLATES:  # noqa: F405
    _engine.setdefault("OPTIONS", {})["debug"] = False
# Static files as the development server serves them (the bench does not run collectstatic for the manifest).
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
