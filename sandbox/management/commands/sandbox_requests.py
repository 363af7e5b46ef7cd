"""manage.py sandbox_requests: the sandbox's request log, oldest first, as a table or as JSON."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from sandbox.models import SandboxRequest


class Command(BaseCommand):
    help = "Print every API request the sandbox received (oldest first). Headers are never logged."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", dest="as_json", help="a JSON array, one object per request")
        parser.add_argument("--limit", type=int, default=0, metavar="N", help="only the last N requests")
        parser.add_argument("--clear", action="store_true", help="empty the log")

    def handle(self, *args, as_json: bool = False, limit: int = 0, clear: bool = False, **options) -> None:
        if clear:
            deleted, _ = SandboxRequest.objects.all().delete()
            self.stdout.write(f"Deleted {deleted} logged request(s).")
            return
        entries = SandboxRequest.objects.order_by("-id")
        if limit > 0:
            entries = entries[:limit]
        rows = sorted(entries, key=lambda entry: entry.id)
        if as_json:
            self.stdout.write(_dumps([_as_dict(entry) for entry in rows]))
            return
        if not rows:
            self.stdout.write("No requests logged.")
            return
        self.stdout.write(f"{'id':>6}  {'time (UTC)':<23}  {'method':<6}  {'status':<7}  {'fault':<24}  path")
        for entry in rows:
            status = str(entry.status) if entry.status else "dropped"
            when = entry.created_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:23]
            self.stdout.write(
                f"{entry.id:>6}  {when:<23}  {entry.method:<6}  {status:<7}  {entry.fault:<24}  {entry.path}"
            )


def _as_dict(entry: SandboxRequest) -> dict:
    return {
        "id": entry.id,
        "created_at": entry.created_at.isoformat(),
        "method": entry.method,
        "path": entry.path,
        "body": entry.body,
        "status": entry.status,
        "fault": entry.fault,
    }


def _dumps(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
