"""Give the app's database role its privileges: run as the owner (after migrate), whenever the app role changes.

DATABASE_URL=<owner's URL> python manage.py grant_app_role [--role isdown_app]
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from incidents import dbroles


class Command(BaseCommand):
    help = "Grant the app's database role its privileges (run as the database owner)."

    def add_arguments(self, parser):
        parser.add_argument("--role", default=settings.DATABASE_APP_ROLE, help="the app's role (DATABASE_APP_ROLE)")

    def handle(self, *args, role: str, **options) -> None:
        with connection.cursor() as cursor:
            if not dbroles.role_exists(cursor, role):
                raise CommandError(f"There is no database role {role!r}: create it first (see README, Deployment).")
            if not dbroles.grant_app_role(cursor, role):
                raise CommandError(f"{role!r} is the role this command runs as: run it as the owner, not the app.")
        self.stdout.write(f"Granted the app's privileges to {role}; on the audit table it may only SELECT and INSERT.")
