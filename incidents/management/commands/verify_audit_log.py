from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from incidents.audit import verify_chain


class Command(BaseCommand):
    help = "Recompute the audit log's hash chain. Exit 0 with the head hash, or 1 naming the first broken seq."

    def handle(self, *args, **options) -> None:
        result = verify_chain()
        if not result.ok:
            raise CommandError(result.message(), returncode=1)
        self.stdout.write(result.message())
