"""The Celery app: Redis carries messages, Postgres holds every bit of state.

Queues, routes, the beat schedule and every limit come from settings (CELERY_* names).
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isdown_admin.settings")

app = Celery("isdown_admin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
