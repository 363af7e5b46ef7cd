from __future__ import annotations

import dataclasses
import json
import sys

from django.core.management.base import BaseCommand, CommandError

from incidents import audit, checkpoints


class Command(BaseCommand):
    help = (
        "Recompute the audit log's hash chain and check it against every signed checkpoint (the table's and the "
        "sink's). Exit 0 with the head hash, or 1 naming the first broken seq or contradicted checkpoint."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--segment",
            metavar="FIRST:LAST",
            help="internal (the background verification's parallel workers): check only these seqs, anchors as "
            "JSON on standard input; print progress lines, then the segment's result as JSON",
        )

    def handle(self, *args, segment: str | None = None, **options) -> None:
        if segment:
            self._segment(segment)
            return
        result = checkpoints.verify()
        if not result.ok:
            raise CommandError(result.message(), returncode=1)
        self.stdout.write(result.message())

    def _segment(self, segment: str) -> None:
        try:
            first, last = (int(part) for part in segment.split(":"))
        except ValueError:
            raise CommandError("--segment takes FIRST:LAST, two seqs") from None
        anchors = [audit.Anchor(**anchor) for anchor in json.load(sys.stdin)]

        def progress(count: int) -> None:
            self.stdout.write(f"progress {count}")
            self.stdout.flush()

        result = audit.verify_segment(first, last, anchors, progress=progress)
        self.stdout.write("result " + json.dumps(dataclasses.asdict(result)))
