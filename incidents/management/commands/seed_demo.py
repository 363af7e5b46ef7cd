from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import TypedDict

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from incidents import alerts, audit
from incidents.models import (
    AlertRoute,
    AlertWebhook,
    Draft,
    DraftKind,
    DraftTemplate,
    Membership,
    Role,
    Service,
    Severity,
    Stage,
    Team,
    TemplateKind,
)


class DemoTeam(TypedDict):
    services: list[tuple[str, int]]  # (name, IsDown service id)
    members: list[tuple[str, Role]]  # (username, role)


DEMO_TEAMS: dict[str, DemoTeam] = {
    "Platform": {
        "services": [("API", 1001), ("Dashboard", 1002)],
        # Two approvers per team: an approver's own draft needs the other one (four eyes).
        "members": [
            ("responder", Role.RESPONDER),
            ("approver", Role.APPROVER),
            ("approver2", Role.APPROVER),
            ("auditor", Role.AUDITOR),
        ],
    },
    "Data": {
        "services": [("Pipeline", 2001)],
        "members": [
            ("data-responder", Role.RESPONDER),
            ("data-approver", Role.APPROVER),
            ("data-approver2", Role.APPROVER),
        ],
    },
}
# Draft templates every demo team starts with (draft_templates.PLACEHOLDERS are filled when one is picked).
DEMO_TEMPLATES: list[dict[str, str]] = [
    {
        "name": "Elevated errors",
        "kind": TemplateKind.OPEN,
        "title": "Elevated error rates on {services}",
        "severity": Severity.MINOR,
        "stage": Stage.INVESTIGATING,
        "description": "Since {started_at} some requests to {services} fail. We are investigating and will post "
        "an update within 30 minutes.",
    },
    {
        "name": "Full outage",
        "kind": TemplateKind.OPEN,
        "title": "{services} unavailable",
        "severity": Severity.MAJOR,
        "stage": Stage.INVESTIGATING,
        "description": "{services} is unavailable since {started_at}. Our engineers are working on it; next update "
        "within 30 minutes.",
    },
    {
        "name": "Cause identified",
        "kind": TemplateKind.UPDATE,
        "stage": Stage.IDENTIFIED,
        "description": "We have identified the cause of “{incident_title}” and are rolling out a fix.",
    },
    {
        "name": "Fix deployed, monitoring",
        "kind": TemplateKind.UPDATE,
        "stage": Stage.MONITORING,
        "description": "A fix is in place for {services}. We are monitoring to make sure it holds.",
    },
    {
        "name": "Resolved",
        "kind": TemplateKind.RESOLVE,
        "stage": Stage.RESOLVED,
        "description": "This incident has been resolved: {services} is working normally again. We are sorry for the "
        "disruption since {started_at}.",
    },
]
DEMO_STAFF = "admin"
SEED_ACTOR = "system:seed_demo"
# One outage across two services (issue 12): drafted by the responder, approved by the approver, published by the
# worker to the sandbox as one IsDown incident per service, grouped as one incident here.
DEMO_GROUPED_TEAM, DEMO_GROUPED_SERVICES = "Platform", ("API", "Dashboard")
DEMO_GROUPED_AUTHOR, DEMO_GROUPED_APPROVER = "responder", "approver"
DEMO_GROUPED_FIELDS: dict[str, str] = {
    "title": "Elevated error rates on API and Dashboard",
    "severity": "major",
    "stage": "identified",
    "description": "Requests to the API and the Dashboard fail intermittently. We found the cause and are rolling "
    "back a configuration change.",
}


# Issue 12's other features, shown once in the sandbox (see _seed_feature_demos).
DEMO_SCHEDULED_FIELDS: dict[str, str] = {
    "title": "Scheduled maintenance of the Pipeline",
    "severity": "minor",
    "stage": "identified",
    "description": "Pipeline runs pause for about 30 minutes for a database upgrade. Results are delayed, not lost.",
}
DEMO_LINTED_FIELDS: dict[str, str] = {
    "title": "Login failures",
    "severity": "major",
    "stage": "investigating",
    "description": "Logins fail since 09:12. TimeoutError from auth-db-2.internal (10.0.4.17); ask oncall@example.com.",
}
DEMO_BREAK_GLASS_FIELDS: dict[str, str] = {
    "title": "Dashboard sign-in unavailable",
    "severity": "major",
    "stage": "investigating",
    "description": "Signing in to the Dashboard fails for all customers. We are working on it.",
}
# Development only (the sandbox): a public secret, so a demo user can add approver2's authenticator to their app.
DEMO_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # noqa: S105 - a demo secret, sandbox only
DEMO_ALERT: dict[str, object] = {
    "source": "uptime-checker",
    "status": "firing",
    "fingerprint": "demo-dashboard-down",
    "labels": {"service": "dashboard"},
    "title": "Dashboard is not loading",
    "description": "502 on every check from 3 regions.",
}


class Command(BaseCommand):
    help = "Create the demo teams, services and users. Idempotent; refuses to run with DEBUG off unless --force."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--force", action="store_true", help="run even though DEBUG is off")

    def handle(self, *args, force: bool = False, **options) -> None:
        if not settings.DEBUG and not force:
            raise CommandError("DEBUG is off: this looks like production. Pass --force to seed demo data anyway.")
        password = os.environ.get("DEMO_PASSWORD") or "isdown-demo-2026"
        with transaction.atomic():
            created_users = self._seed(password)
            grouped = self._seed_grouped_incident()
            demos = self._seed_feature_demos()
        if created_users:
            self.stdout.write(f"Demo users created: {', '.join(created_users)}")
        if grouped:
            self.stdout.write(
                f"Demo incident across {' and '.join(DEMO_GROUPED_SERVICES)} drafted and approved "
                f"(draft #{grouped}); the worker publishes it to the sandbox, one IsDown incident per service."
            )
        for demo in demos:
            self.stdout.write(f"Demo: {demo}.")
        if not created_users and not grouped and not demos:
            self.stdout.write("Demo data already present; nothing changed.")
        self._greet(password)

    def _greet(self, password: str) -> None:
        """Every run (make run ends with it): where the app is, whom to sign in as, and with what."""
        self.stdout.write(f"\nisdown-admin: open {settings.SITE_URL}/ and sign in as")
        self.stdout.write(f"  {DEMO_STAFF:<16} staff (the admin, the sandbox's control page)")
        for team_name, spec in DEMO_TEAMS.items():
            for username, role in spec["members"]:
                self.stdout.write(f"  {username:<16} {role.label.lower()} of {team_name}")
        self.stdout.write(f"with the demo password {password} (DEMO_PASSWORD; users who changed theirs keep it)\n")

    def _seed(self, password: str) -> list[str]:
        User = get_user_model()
        created_users = []

        def ensure_user(username: str, **extra) -> object:
            user, created = User.objects.get_or_create(username=username, defaults=extra)
            if created:
                user.set_password(password)
                user.save(update_fields=["password"])
                created_users.append(username)
                audit.record(
                    "user.created", actor_label=SEED_ACTOR, target=user, summary=f"Demo user {username} created"
                )
            return user

        ensure_user(DEMO_STAFF, is_staff=True, is_superuser=True, email="admin@example.com")
        for team_name, spec in DEMO_TEAMS.items():
            team, created = Team.objects.get_or_create(name=team_name)
            if created:
                audit.record(
                    "team.created",
                    actor_label=SEED_ACTOR,
                    team=team,
                    target=team,
                    summary=f"Demo team {team_name} created",
                )
            for service_name, isdown_id in spec["services"]:
                service, created = Service.objects.get_or_create(
                    isdown_service_id=isdown_id, defaults={"team": team, "name": service_name}
                )
                if created:
                    audit.record(
                        "service.created",
                        actor_label=SEED_ACTOR,
                        team=team,
                        target=service,
                        summary=f"Demo service {service} created",
                        changes={"name": [None, service_name], "isdown_service_id": [None, isdown_id]},
                    )
            for username, role in spec["members"]:
                user = ensure_user(username, email=f"{username}@example.com")
                membership, created = Membership.objects.get_or_create(user=user, team=team, defaults={"role": role})
                if created:
                    audit.record(
                        "membership.created",
                        actor_label=SEED_ACTOR,
                        team=team,
                        target=membership,
                        summary=f"{username} joined {team_name} as {role}",
                        changes={"role": [None, str(role)]},
                    )
            self._seed_templates(team)
            self._map_alert_labels(team)
        self._register_sandbox_services()
        return created_users

    def _seed_templates(self, team: Team) -> None:
        for spec in DEMO_TEMPLATES:
            fields = {"title": "", "severity": "", "stage": "", "description": "", **spec}
            template, created = DraftTemplate.objects.get_or_create(team=team, name=spec["name"], defaults=fields)
            if created:
                audit.record(
                    "template.created",
                    actor_label=SEED_ACTOR,
                    team=team,
                    target=template,
                    summary=f"Demo template “{template.name}” of {team.name} created",
                    changes={name: [None, str(value)] for name, value in fields.items() if value},
                )

    def _seed_grouped_incident(self) -> int | None:
        """One incident across API and Dashboard, through the real workflow (drafted, submitted, approved: audited,
        four eyes); the worker publishes it. Only against the sandbox, and only once. Returns the draft's id."""
        if not settings.SANDBOX_ENABLED:
            return None
        from incidents import workflow

        fields = DEMO_GROUPED_FIELDS
        if Draft.objects.filter(title=fields["title"]).exists():
            return None
        User = get_user_model()
        team = Team.objects.get(name=DEMO_GROUPED_TEAM)
        services = [team.services.get(name=name) for name in DEMO_GROUPED_SERVICES]
        revision = workflow.create_and_submit(
            user=User.objects.get(username=DEMO_GROUPED_AUTHOR),
            service=services[0],
            kind=DraftKind.OPEN,
            fields=dict(fields),
            also_services=services[1:],
        )
        workflow.approve(
            draft_id=revision.draft_id,
            revision_id=revision.pk,
            reviewer=User.objects.get(username=DEMO_GROUPED_APPROVER),
            sha256=revision.sha256,
        )
        return revision.draft_id

    def _seed_break_glass(self, platform: Team) -> str:
        """approver2 enrols an authenticator (the demo secret, so you can add it to your app) and breaks the glass
        on their own draft: a red queue on the dashboard until another approver reviews it after the fact."""
        from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value

        from incidents import mfa, workflow

        def code(moment) -> str:
            return format_hotp_value(hotp_value(DEMO_TOTP_SECRET, int(moment.timestamp()) // 30))

        user = get_user_model().objects.get(username="approver2")
        now = timezone.now()
        if not mfa.has_totp(user):
            mfa.enrol(user=user, secret=DEMO_TOTP_SECRET, code=code(now - timedelta(seconds=30)), now=now)
        revision = workflow.create_and_submit(
            user=user,
            service=platform.services.get(name="Dashboard"),
            kind=DraftKind.OPEN,
            fields=dict(DEMO_BREAK_GLASS_FIELDS),
        )
        workflow.break_glass(
            draft_id=revision.draft_id,
            revision_id=revision.pk,
            user=user,
            sha256=revision.sha256,
            reason="Demo: customers cannot log in and the other approver is on a plane.",
            totp_code=code(now),
            now=now,
        )
        return (
            f"a break-glass publication by approver2 waiting for review after the fact (draft #{revision.draft_id}; "
            f"approver2's demo authenticator secret is {DEMO_TOTP_SECRET})"
        )

    def _seed_feature_demos(self) -> list[str]:
        """Issue 12's features on show (sandbox only, once, through the real code paths): a scheduled maintenance
        notice, a draft in review whose words the public-text check warns about, and a draft an alert wrote."""
        if not settings.SANDBOX_ENABLED or Draft.objects.filter(title=DEMO_SCHEDULED_FIELDS["title"]).exists():
            return []
        from incidents import workflow

        User = get_user_model()
        shown = []
        data = Team.objects.get(name="Data")
        pipeline = data.services.get(name="Pipeline")
        scheduled = workflow.create_and_submit(
            user=User.objects.get(username="data-responder"),
            service=pipeline,
            kind=DraftKind.OPEN,
            fields=dict(DEMO_SCHEDULED_FIELDS),
        )
        tomorrow_8 = timezone.localtime().replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(days=1)
        workflow.approve(
            draft_id=scheduled.draft_id,
            revision_id=scheduled.pk,
            reviewer=User.objects.get(username="data-approver"),
            sha256=scheduled.sha256,
            publish_at=tomorrow_8,
        )
        shown.append(f"a maintenance notice scheduled for {tomorrow_8:%Y-%m-%d %H:%M %Z} (draft #{scheduled.draft_id})")
        platform = Team.objects.get(name="Platform")
        linted = workflow.create_and_submit(
            user=User.objects.get(username="responder"),
            service=platform.services.get(name="API"),
            kind=DraftKind.OPEN,
            fields=dict(DEMO_LINTED_FIELDS),
        )
        shown.append(f"a draft in review the public-text check warns about (draft #{linted.draft_id})")
        shown.append(self._seed_break_glass(platform))
        approver = User.objects.get(username="approver")
        if not AlertWebhook.objects.filter(team=platform).exists():
            alerts.rotate_token(team=platform, user=approver)  # the token is not shown: rotate it on the Alerts page
        [outcome] = alerts.receive(team=platform, alerts=alerts.parse(json.dumps(DEMO_ALERT).encode()))
        if outcome.get("draft"):
            shown.append(f"a draft written by an alert from {DEMO_ALERT['source']} (draft #{outcome['draft']})")
        return shown

    def _map_alert_labels(self, team: Team) -> None:
        """Drafts from alerts (issue 12 §6): each demo service is mapped from the label ``service="<its name>"``,
        by the team's approver (the token is left for an approver to create on the Alerts page: it is shown once)."""
        approver = (
            get_user_model()
            .objects.filter(memberships__team=team, memberships__role=Role.APPROVER)
            .order_by("pk")
            .first()
        )
        if approver is None:
            return
        for service in team.services.all():
            value = service.name.lower()
            if not AlertRoute.objects.filter(team=team, label_name="service", label_value=value).exists():
                alerts.add_route(team=team, user=approver, label_name="service", label_value=value, service=service)

    def _register_sandbox_services(self) -> None:
        """Tell the IsDown sandbox about the demo services, so it accepts writes to them."""
        if not settings.SANDBOX_ENABLED:
            return
        from sandbox.registry import register_service

        for spec in DEMO_TEAMS.values():
            for service_name, isdown_id in spec["services"]:
                register_service(isdown_id, service_name)
