from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from incidents import checkpoints


class Command(BaseCommand):
    help = (
        "Recompute the audit log's hash chain and check it against every signed checkpoint (the table's and the "
        "sink's). Exit 0 with the head hash, or 1 naming the first broken seq or contradicted checkpoint."
    )

    def handle(self, *args, **options) -> None:
        result = checkpoints.verify()
        if not result.ok:
            raise CommandError(result.message(), returncode=1)
        self.stdout.write(result.message())
