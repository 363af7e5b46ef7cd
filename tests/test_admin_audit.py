"""Every change of team, membership or service made in the admin is audited with old → new values."""

from __future__ import annotations

import io

import pytest

from incidents import audit
from incidents.audit import verify_chain
from incidents.models import AuditEvent, Membership, Role, Service

pytestmark = pytest.mark.django_db


def test_adding_and_changing_a_service_in_the_admin_is_audited(as_user, staff, platform):
    client = as_user(staff)
    response = client.post(
        "/admin/incidents/service/add/", {"team": platform.pk, "name": "Status API", "isdown_service_id": "4242"}
    )
    assert response.status_code == 302
    service = Service.objects.get(isdown_service_id=4242)
    created = AuditEvent.objects.get(action="service.created")
    assert created.actor_label == "staff"
    assert created.team_id == platform.pk
    assert created.changes["name"] == [None, "Status API"]

    response = client.post(
        f"/admin/incidents/service/{service.pk}/change/",
        {"team": platform.pk, "name": "Public API", "isdown_service_id": "4242"},
    )
    assert response.status_code == 302
    changed = AuditEvent.objects.get(action="service.changed")
    assert changed.changes == {"name": ["Status API", "Public API"]}
    assert changed.target_label.startswith("Public API")


def test_changing_a_role_and_deleting_a_membership_are_audited(as_user, staff, responder, platform):
    membership = Membership.objects.get(user=responder)
    client = as_user(staff)
    response = client.post(
        f"/admin/incidents/membership/{membership.pk}/change/",
        {"user": responder.pk, "team": platform.pk, "role": Role.APPROVER},
    )
    assert response.status_code == 302
    assert AuditEvent.objects.get(action="membership.changed").changes == {"role": ["responder", "approver"]}

    response = client.post(f"/admin/incidents/membership/{membership.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    deleted = AuditEvent.objects.get(action="membership.deleted")
    assert deleted.changes["role"] == ["approver", None]
    # The label snapshot keeps the history readable after the row is gone.
    assert "responder" in deleted.target_label
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert verify_chain().ok


def test_memberships_edited_inline_on_a_team_are_audited(as_user, staff, platform, approver2):
    client = as_user(staff)
    response = client.post(
        f"/admin/incidents/team/{platform.pk}/change/",
        {
            "name": "Platform",
            # The team's reminder settings (issue 12 §5), as the form shows them.
            "update_interval_minutes": "30",
            "review_escalation_minutes": "10",
            "memberships-TOTAL_FORMS": "2",
            "memberships-INITIAL_FORMS": "1",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
            "memberships-0-id": str(Membership.objects.get(user=approver2).pk),
            "memberships-0-team": str(platform.pk),
            "memberships-0-user": str(approver2.pk),
            "memberships-0-role": Role.AUDITOR,
            "memberships-1-team": str(platform.pk),
            "memberships-1-user": "",
            "memberships-1-role": "",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    event = AuditEvent.objects.get(action="membership.changed")
    assert event.changes == {"role": ["approver", "auditor"]}


# --- Users, groups, permissions, passwords and lockout resets, however they are changed ----------------------
def last_seq() -> int:
    return AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0


def events(prefix: str, *, after: int = 0) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action__startswith=prefix, seq__gt=after).order_by("seq"))


def event(action: str, *, after: int) -> AuditEvent:
    """The one event of this action since ``after`` (the personas' own creation is audited too)."""
    [only] = events(action, after=after)
    assert only.action == action
    return only


def user_form(user, **changes) -> dict:
    """The admin's user change form as the page would post it."""
    data = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": "on" if user.is_active else "",
        "is_staff": "on" if user.is_staff else "",
        "is_superuser": "on" if user.is_superuser else "",
        "groups": [str(pk) for pk in user.groups.values_list("pk", flat=True)],
        "user_permissions": [str(pk) for pk in user.user_permissions.values_list("pk", flat=True)],
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value != ""}


def test_creating_a_user_in_the_admin_is_audited_without_the_password(as_user, staff):
    start = last_seq()
    response = as_user(staff).post(
        "/admin/auth/user/add/",
        {
            "username": "newcomer",
            "usable_password": "true",
            "password1": "a-long-enough-passphrase",
            "password2": "a-long-enough-passphrase",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    created = event("user.created", after=start)
    assert created.target_label == "newcomer"
    assert created.actor_label == "staff"
    assert created.team_id is None  # staff-only on the audit log page
    assert created.changes["username"] == [None, "newcomer"]
    assert created.changes["is_staff"] == [None, False]
    assert created.changes["password"] == [None, "set"]
    assert "a-long-enough-passphrase" not in str(created.changes) + created.summary
    assert "pbkdf2" not in str(created.changes)
    assert not events("user.password_", after=start)


def test_granting_staff_superuser_and_deactivating_in_the_admin_are_audited(as_user, staff, responder):
    response = as_user(staff).post(
        f"/admin/auth/user/{responder.pk}/change/",
        user_form(responder, is_staff="on", is_superuser="on", is_active="", email="r@example.com"),
    )
    assert response.status_code == 302, response.content[:2000]
    event = AuditEvent.objects.get(action="user.changed")
    assert event.changes == {
        "email": ["responder@example.com", "r@example.com"],
        "is_active": [True, False],
        "is_staff": [False, True],
        "is_superuser": [False, True],
    }
    assert event.actor_label == "staff"
    assert "staff granted" in event.summary
    assert "superuser granted" in event.summary
    assert "deactivated" in event.summary


def test_group_and_permission_changes_in_the_admin_are_audited(as_user, staff, responder):
    from django.contrib.auth.models import Group, Permission

    operators = Group.objects.create(name="operators")
    view_team = Permission.objects.get(codename="view_team")
    client = as_user(staff)
    response = client.post(
        f"/admin/auth/user/{responder.pk}/change/",
        user_form(responder, groups=[str(operators.pk)], user_permissions=[str(view_team.pk)]),
    )
    assert response.status_code == 302, response.content[:2000]
    assert AuditEvent.objects.get(action="user.groups_changed").changes == {"groups": [[], ["operators"]]}
    assert AuditEvent.objects.get(action="user.permissions_changed").changes == {
        "user_permissions": [[], ["incidents.view_team"]]
    }
    assert not AuditEvent.objects.filter(action="user.changed").exists()  # nothing else changed

    response = client.post(
        f"/admin/auth/group/{operators.pk}/change/", {"name": "operators", "permissions": [str(view_team.pk)]}
    )
    assert response.status_code == 302, response.content[:2000]
    event = AuditEvent.objects.get(action="group.permissions_changed")
    assert event.changes == {"permissions": [[], ["incidents.view_team"]]}
    assert event.actor_label == "staff"
    assert verify_chain().ok


def test_setting_a_password_in_the_admin_is_audited(as_user, staff, responder):
    start = last_seq()
    response = as_user(staff).post(
        f"/admin/auth/user/{responder.pk}/password/",
        {"password1": "an-admin-chosen-passphrase", "password2": "an-admin-chosen-passphrase"},
    )
    assert response.status_code == 302, response.content[:2000]
    changed = event("user.password_changed", after=start)
    assert changed.actor_label == "staff"
    assert changed.target_label == "responder"
    assert changed.summary == "User responder: password changed by staff"


def test_changing_ones_own_password_is_audited(as_user, responder, password):
    start = last_seq()
    response = as_user(responder).post(
        "/accounts/password/",
        {"old_password": password, "new_password1": "my-new-passphrase-1", "new_password2": "my-new-passphrase-1"},
    )
    assert response.status_code == 302
    assert event("user.password_changed", after=start).actor_id == responder.pk


def test_manage_py_changepassword_is_audited(responder, monkeypatch):
    from django.contrib.auth.management.commands import changepassword
    from django.core.management import call_command

    monkeypatch.setattr(changepassword.getpass, "getpass", lambda prompt="": "a-console-passphrase")
    start = last_seq()
    call_command("changepassword", "responder", stdout=io.StringIO())
    changed = event("user.password_changed", after=start)
    assert changed.actor_id is None
    assert changed.actor_label.startswith("system:")
    assert changed.target_label == "responder"
    assert changed.summary.startswith("User responder: password changed by ")


def test_manage_py_createsuperuser_is_audited(db, monkeypatch):
    from django.core.management import call_command

    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a-superuser-passphrase")
    call_command(
        "createsuperuser", interactive=False, username="root2", email="root2@example.com", stdout=io.StringIO()
    )
    event = AuditEvent.objects.get(action="user.created", target_label="root2")
    assert event.changes["is_superuser"] == [None, True]
    assert event.changes["is_staff"] == [None, True]
    assert event.summary.startswith("Superuser root2 created by ")


def test_changes_made_in_the_shell_are_audited(responder, approver):
    from django.contrib.auth.models import Group, Permission

    start = last_seq()
    responder.is_staff = True
    responder.save()
    assert event("user.changed", after=start).changes == {"is_staff": [False, True]}

    admins = Group.objects.create(name="admins")
    responder.groups.add(admins)
    admins.user_set.add(approver)  # from the other side
    admins.permissions.add(Permission.objects.get(codename="delete_team"))
    admins.user_set.clear()
    responder.set_password("a-shell-passphrase-1")
    responder.save()
    approver.delete()
    responder.groups.add(admins)
    admins.delete()

    groups = [(e.target_label, e.changes["groups"]) for e in events("user.groups_changed", after=start)]
    assert groups[:2] == [("responder", [[], ["admins"]]), ("approver", [[], ["admins"]])]
    assert sorted(groups[2:4]) == [("approver", [["admins"], []]), ("responder", [["admins"], []])]
    assert groups[4:] == [("responder", [[], ["admins"]])]
    assert event("group.deleted", after=start).changes == {
        "name": ["admins", None],
        "members": [["responder"], None],
        "permissions": [["incidents.delete_team"], None],
    }
    assert events("group.", after=start)[0].action == "group.created"
    assert events("group.permissions_changed", after=start)[0].changes == {
        "permissions": [[], ["incidents.delete_team"]]
    }
    assert [e.target_label for e in events("user.password_", after=start)] == ["responder"]
    deleted = event("user.deleted", after=start)
    assert deleted.target_label == "approver"
    assert deleted.changes["memberships"] == [["Platform: approver"], None]
    assert verify_chain().ok


def test_a_sign_in_writes_no_user_change(client, responder, password):
    start = last_seq()
    client.post("/accounts/login/", {"username": "responder", "password": password})
    assert [e.action for e in events("", after=start)] == ["auth.login"]  # last_login is not a change anyone made


def test_a_password_hash_upgraded_at_sign_in_is_audited_as_a_rehash(client, responder, real_password_hashing):
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    responder.password = PBKDF2PasswordHasher().encode("an-old-passphrase", "oldsalt", iterations=1000)
    responder.save()
    response = client.post("/accounts/login/", {"username": "responder", "password": "an-old-passphrase"})
    assert response.status_code == 302
    event = events("user.password_")[-1]
    assert event.action == "user.password_rehashed"
    assert event.summary == "User responder: password hash upgraded at sign-in"


def lock_out(client, username: str = "responder", ip: str = "198.51.100.9") -> None:
    from django.conf import settings

    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": username, "password": "wrong"}, REMOTE_ADDR=ip)
    assert AuditEvent.objects.filter(action="auth.locked_out", target_label=username).exists()


def test_axes_reset_command_is_audited(client, responder):
    from django.core.management import call_command

    lock_out(client)
    call_command("axes_reset", stdout=io.StringIO())
    event = AuditEvent.objects.get(action="auth.lockout_reset")
    assert event.target_label == "responder"
    assert event.changes == {"failures": [5, 0]}
    assert event.context["locked_ip"] == "198.51.100.9"
    assert event.actor_label.startswith("system:")


def test_axes_reset_username_command_is_audited(client, responder, approver):
    from django.core.management import call_command

    lock_out(client, "responder")
    lock_out(client, "approver")
    call_command("axes_reset_username", "approver", stdout=io.StringIO())
    assert [e.target_label for e in events("auth.lockout_reset")] == ["approver"]


def test_unlocking_in_the_axes_admin_is_audited(client, as_user, staff, responder, password):
    from axes.models import AccessAttempt

    lock_out(client)
    attempt = AccessAttempt.objects.get(username="responder")
    response = as_user(staff).post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="auth.lockout_reset")
    assert event.actor_label == "staff"
    assert "reset by staff" in event.summary
    ok = client.post("/accounts/login/", {"username": "responder", "password": password}, REMOTE_ADDR="198.51.100.9")
    assert ok.status_code == 302


def test_a_lockout_split_over_several_browsers_is_one_reset(client, responder):
    from axes.utils import reset

    for n in range(5):
        client.post(
            "/accounts/login/",
            {"username": "responder", "password": "wrong"},
            REMOTE_ADDR="198.51.100.9",
            HTTP_USER_AGENT=f"browser {n}",
        )
    assert reset(username="responder") == 5
    assert [e.changes for e in events("auth.lockout_reset")] == [{"failures": [5, 0]}]


def test_expired_attempts_and_failures_below_the_limit_are_not_lockout_resets(client, responder):
    from datetime import timedelta

    from axes.models import AccessAttempt
    from axes.utils import reset
    from django.utils import timezone

    lock_out(client, ip="198.51.100.9")
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(hours=1))  # the lockout ran out
    client.post("/accounts/login/", {"username": "responder", "password": "wrong"}, REMOTE_ADDR="198.51.100.10")
    # The next attempt cleaned the expired lockout up (not a reset); a reset of the one failure left is not one.
    assert reset(username="responder") == 1
    assert not events("auth.lockout_reset")


def test_a_bulk_delete_whose_audit_fails_deletes_nothing(as_user, staff, responder, approver, monkeypatch):
    record = audit.record
    deleted: list[str] = []

    def failing_on_the_second_deletion(action, **kwargs):
        if action == "membership.deleted":
            deleted.append(action)
            if len(deleted) == 2:
                raise RuntimeError("the audit log is unavailable")
        return record(action, **kwargs)

    monkeypatch.setattr(audit, "record", failing_on_the_second_deletion)
    memberships = list(Membership.objects.filter(user__in=[responder, approver]).values_list("pk", flat=True))
    with pytest.raises(RuntimeError, match="unavailable"):
        as_user(staff).post(
            "/admin/incidents/membership/",
            {"action": "delete_selected", "_selected_action": memberships, "post": "yes"},
        )
    assert Membership.objects.filter(pk__in=memberships).count() == 2
    assert not AuditEvent.objects.filter(action="membership.deleted").exists()
