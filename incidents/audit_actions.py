"""The audit log's vocabulary: every action an event may record, with a label for people (as Wagtail's log
actions). ``audit.record`` refuses an action that is not registered here, so a misspelt action fails the first
test that writes it instead of becoming a name nobody filters on.

Actions are dotted, ``<kind>.<what happened>``; a kind groups them (``draft.`` filters every draft action).
An action no longer written stays registered as *retired*: the events that carry it keep their label and can
still be filtered, but nothing records it again. A row whose action was never registered (written before this
registry) still displays: its label is its name.

A leaf module (no Django, no models), so models, forms and audit.py can all read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# As AuditEvent.action stores them: lower-case dotted names, at most 64 characters.
NAME_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
NAME_MAX_LENGTH = 64


class UnregisteredAction(ValueError):
    """An action that is not in the registry (or is retired) cannot be recorded."""


@dataclass(frozen=True)
class AuditAction:
    name: str
    label: str
    retired: bool = False

    @property
    def kind(self) -> str:
        return self.name.split(".", 1)[0]


# Each kind with how the audit filter names it, in the order the filter lists them.
KINDS: dict[str, str] = {
    "draft": "Drafts",
    "review": "Reviews",
    "publication": "Publications",
    "incident": "Incidents",
    "notification": "Emails",
    "auth": "Sign-ins",
    "mfa": "Two-factor authentication",
    "user": "Users",
    "group": "Groups",
    "team": "Teams",
    "membership": "Memberships",
    "service": "Services",
    "template": "Draft templates",
    "alert": "Alerts",
    "audit": "The audit log",
    "sandbox": "The sandbox",
}

ACTIONS: dict[str, AuditAction] = {}


def register(name: str, label: str, *, retired: bool = False) -> AuditAction:
    """Add ``name`` to the vocabulary; a malformed name, an unknown kind or a second registration is a bug."""
    if not NAME_RE.match(name) or len(name) > NAME_MAX_LENGTH:
        raise ValueError(f"audit action {name!r} is not a lower-case dotted name of at most {NAME_MAX_LENGTH}")
    if name.split(".", 1)[0] not in KINDS:
        raise ValueError(f"audit action {name!r} is of no known kind ({', '.join(KINDS)})")
    if name in ACTIONS:
        raise ValueError(f"audit action {name!r} is registered twice")
    action = ACTIONS[name] = AuditAction(name, label, retired)
    return action


def require_recordable(name: str) -> AuditAction:
    """The registered, current action ``name``; UnregisteredAction otherwise."""
    action = ACTIONS.get(name)
    if action is None:
        raise UnregisteredAction(f"audit action {name!r} is not registered in incidents/audit_actions.py")
    if action.retired:
        raise UnregisteredAction(f"audit action {name!r} is retired: it labels old events, nothing records it")
    return action


def label(name: str) -> str:
    """How people read ``name``: its label, or the name itself for a row older than the registry."""
    action = ACTIONS.get(name)
    return action.label if action is not None else name


def filter_choices() -> list[tuple[str, str | list[tuple[str, str]]]]:
    """The audit filter's choices: per kind, "every action of this kind" (``draft.``), then each action."""
    choices: list[tuple[str, str | list[tuple[str, str]]]] = [("", "Any action")]
    for kind, kind_label in KINDS.items():
        actions = [action for action in ACTIONS.values() if action.kind == kind]
        if not actions:
            continue
        group = [(f"{kind}.", f"Every {kind} action")]
        group += [(a.name, f"{a.label} (no longer recorded)" if a.retired else a.label) for a in actions]
        choices.append((kind_label, group))
    return choices


# --- The vocabulary -----------------------------------------------------------------------------------------
# workflow.py
register("draft.created", "Draft started")
register("draft.saved", "Draft saved")
register("draft.submitted", "Draft submitted for review")
register("draft.withdrawn", "Draft withdrawn from review")
register("draft.discarded", "Draft discarded")
register("draft.reopened", "Draft reopened after IsDown refused it")
register("review.approved", "Revision approved")
register("review.changes_requested", "Changes requested")
register("review.rejected", "Revision rejected")
# public_text.py, draft_templates.py
register("review.warning_accepted", "Public-text warning accepted")
register("template.created", "Draft template created")
register("template.changed", "Draft template changed")
register("template.deleted", "Draft template deleted")

# publishing.py: its TRANSITIONS table, then the moves that name a more precise action.
register("publication.sending", "Sending to IsDown")
register("publication.refused", "Refused before sending")
register("publication.published", "Published on IsDown")
register("publication.retry_scheduled", "Retry scheduled")
register("publication.failed", "Publication failed")
register("publication.reconciling", "Outcome unknown: checking IsDown")
register("publication.proven_absent", "Not on IsDown: to be sent again")
register("publication.needs_attention", "Needs attention")
register("publication.duplicate_detected", "Duplicate detected on IsDown")
register("publication.retry_requested", "Retry requested")
register("publication.send_again", "Sending again requested")
register("publication.check_requested", "Check of IsDown requested")
register("publication.abandoned", "Publication abandoned")
register("publication.superseded", "Superseded: its draft is being edited and resubmitted")
register("publication.duplicate_resolved", "Duplicate resolved")
register("publication.watch_incomplete", "Watch for a late twin incomplete")
register("publication.lease_expired", "Send lease expired")
register("publication.duplicate_acknowledged", "Duplicate acknowledged")
register("publication.duplicate_deleted", "Duplicate deleted on IsDown")
register("publication.marked_published", "Marked as published")
register("publication.adopted_by_sync", "Adopted from IsDown by sync")
register("publication.due", "Scheduled time reached: queued")
register("publication.cancelled", "Scheduled publication cancelled")
register("publication.reconciled", "Reconciled with IsDown", retired=True)

# alerts.py (issue 12 §6: drafts from alerts)
register("alert.received", "Alert webhook delivery received")
register("alert.refused", "Alert webhook delivery refused")
register("alert.rate_limited", "Alert webhook rate limited")
register("alert.token_rotated", "Alert webhook token rotated")
register("alert.route_added", "Alert mapping added")
register("alert.route_removed", "Alert mapping removed")

# sync.py, notifications.py
register("incident.drifted", "Changed on IsDown outside this app")
register("incident.missing_on_remote", "Missing on IsDown")
register("incident.found_on_remote", "Found on IsDown again")
register("notification.gave_up", "Email not delivered")

# auth_audit.py: what Django owns.
register("auth.login", "Signed in")
register("auth.logout", "Signed out")
register("auth.session_expired", "Session expired")
register("auth.locked_out", "Locked out after failed sign-ins")
register("auth.lockout_reset", "Lockout reset")
register("auth.login_failed", "Sign-in failed", retired=True)
register("user.created", "User created")
register("user.changed", "User changed")
register("user.deleted", "User deleted")
register("user.password_changed", "Password changed")
register("user.time_zone_changed", "Time zone changed")
register("user.password_rehashed", "Password hash upgraded")
register("user.groups_changed", "User's groups changed")
register("user.permissions_changed", "User's permissions changed")
register("group.created", "Group created")
register("group.changed", "Group renamed")
register("group.deleted", "Group deleted")
register("group.permissions_changed", "Group's permissions changed")

# admin.py writes "<model>.created|changed|deleted" for each model it audits (seed_demo writes "created" too).
ADMIN_AUDITED = {"team": "Team", "membership": "Membership", "service": "Service"}
for model_name, verbose_name in ADMIN_AUDITED.items():
    register(f"{model_name}.created", f"{verbose_name} created")
    register(f"{model_name}.changed", f"{verbose_name} changed")
    register(f"{model_name}.deleted", f"{verbose_name} deleted")

# views/audit.py, the sandbox
register("audit.exported", "Audit log exported")
register("audit.verified", "Audit chain verified")
register("sandbox.fault_added", "Sandbox fault queued")
register("sandbox.faults_cleared", "Sandbox faults cleared")

# Break-glass and reminders (issue 12 §4, §5): workflow.py, mfa.py, reminders.py
register("review.break_glass", "Published without review (break-glass)")
register("review.post_reviewed", "Break-glass publication reviewed after the fact")
register("review.escalated", "Review escalated to every approver")
register("mfa.enrolled", "Authenticator app enrolled")
register("mfa.code_refused", "Authenticator code refused")
register("mfa.code_accepted", "Authenticator code accepted")
register("mfa.replaced", "Authenticator app replaced with a recovery code")
register("incident.next_update_due_set", "Next update due time changed")
register("incident.update_overdue", "Update overdue: authors and approvers emailed")
