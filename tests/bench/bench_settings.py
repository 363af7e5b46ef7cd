"""The app's settings with the bench's URLs (bench_urls.py: the app's, plus a bare template view to compare with)."""

from isdown_admin.settings import *  # noqa: F403

ROOT_URLCONF = "tests.bench.bench_urls"
