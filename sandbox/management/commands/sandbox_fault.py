"""manage.py sandbox_fault: queue a fault for the sandbox's next N API requests, or clear them all."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from sandbox import faults
from sandbox.models import FaultKind, SandboxFault

# Who the audit log names for a fault queued or cleared from the command line.
COMMAND_ACTOR = "system:command"


class Command(BaseCommand):
    help = (
        "Queue a fault for the sandbox's next --count API requests (optionally only --method): "
        "--status S [--retry-after N] answers S without processing; --latency MS delays, then processes; "
        "--drop closes the connection without processing; --hang processes, then answers after --hang-seconds. "
        "--clear removes all faults. Without any of these, lists the queued faults. Queuing and clearing are audited."
    )

    def add_arguments(self, parser) -> None:
        kind = parser.add_mutually_exclusive_group()
        kind.add_argument("--status", type=int, metavar="S", help="answer with this status (400-599)")
        kind.add_argument("--latency", type=int, metavar="MS", help="add this many milliseconds, then process")
        kind.add_argument("--drop", action="store_true", help="drop the connection without an answer")
        kind.add_argument("--hang", action="store_true", help="process, then answer too late")
        kind.add_argument("--clear", action="store_true", help="remove every queued fault")
        parser.add_argument("--retry-after", type=int, metavar="N", help="Retry-After seconds (status faults)")
        parser.add_argument(
            "--hang-seconds",
            type=float,
            metavar="N",
            help=f"how long --hang waits before answering (default {faults.DEFAULT_HANG_SECONDS:g})",
        )
        parser.add_argument("--count", type=int, default=1, metavar="N", help="for the next N requests (default 1)")
        parser.add_argument("--method", default="", metavar="M", help="only requests with this method")

    def handle(self, *args, **options) -> None:
        if options["clear"]:
            self.stdout.write(f"Cleared {faults.clear_faults(actor_label=COMMAND_ACTOR)} fault(s).")
            return
        if options["hang_seconds"] is not None and not options["hang"]:
            raise CommandError("--hang-seconds only goes with --hang")
        spec: dict[str, Any]
        if options["status"] is not None:
            spec = {"kind": FaultKind.STATUS, "status": options["status"]}
        elif options["latency"] is not None:
            spec = {"kind": FaultKind.LATENCY, "latency_ms": options["latency"]}
        elif options["drop"]:
            spec = {"kind": FaultKind.DROP}
        elif options["hang"]:
            spec = {"kind": FaultKind.HANG, "hang_seconds": options["hang_seconds"]}
        else:
            self._list()
            return
        try:
            fault = faults.add_fault(
                **spec,
                retry_after=options["retry_after"],
                count=options["count"],
                method=options["method"],
                actor_label=COMMAND_ACTOR,
            )
        except faults.FaultError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"Queued: {fault}.")

    def _list(self) -> None:
        queued = list(SandboxFault.objects.all())
        if not queued:
            self.stdout.write("No faults queued.")
        for fault in queued:
            self.stdout.write(str(fault))
