"""The app's database role cannot rewrite history; the owner cannot truncate it by accident (issue 9, item 2).

Today's attack, step by step, as the role the app connects as: relabel an event, delete three, re-hash the
chain, or get around the triggers with TRUNCATE, ALTER TABLE … DISABLE TRIGGER or session_replication_role.
"""

from __future__ import annotations

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction

from incidents import audit, dbroles
from isdown_admin import preflight

from .conftest import OWNER_URL, as_owner

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def events(db):
    return [audit.record("draft.saved", summary=f"event {n}") for n in range(4)]


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("UPDATE incidents_auditevent SET summary = 'relabelled' WHERE seq = 1", "permission denied"),
        ("DELETE FROM incidents_auditevent WHERE seq IN (2, 3, 4)", "permission denied"),
        ("TRUNCATE incidents_auditevent", "permission denied"),
        ("ALTER TABLE incidents_auditevent DISABLE TRIGGER ALL", "must be owner"),
        ("SET session_replication_role = replica", "permission denied"),
        ("DROP TRIGGER incidents_auditevent_append_only ON incidents_auditevent", "must be owner"),
    ],
)
def test_the_apps_role_cannot_touch_the_audit_log_nor_go_around_its_triggers(events, statement, refusal):
    with pytest.raises(DatabaseError, match=refusal), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)
    assert audit.verify_chain().ok and audit.verify_chain().count == 4


def test_the_apps_role_may_append_and_read(events):
    audit.record("draft.saved", summary="one more")
    assert audit.verify_chain().count == 5


def test_even_the_owner_cannot_truncate_the_audit_log(events):
    with psycopg.connect(**preflight.params(OWNER_URL) | {"dbname": connection.settings_dict["NAME"]}) as owner:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only: TRUNCATE refused"):
            owner.execute("TRUNCATE incidents_auditevent")
        owner.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only: DELETE refused"):
            owner.execute("DELETE FROM incidents_auditevent")
    assert audit.verify_chain().count == 4


def test_the_deploy_check_finds_nothing_wrong_with_the_apps_role_and_everything_with_a_superuser(db, admin_db):
    with connection.cursor() as cursor:
        assert dbroles.role_problems(cursor) == []
    with admin_db() as superuser:
        problems = dbroles.role_problems(superuser.cursor())
    assert any("superuser" in problem for problem in problems)
    with as_owner(), connection.cursor() as cursor:
        assert any("owns the audit table" in problem for problem in dbroles.role_problems(cursor))


def test_granting_is_idempotent_and_refuses_to_grant_to_the_owner_itself(db):
    with as_owner(), connection.cursor() as cursor:
        assert dbroles.grant_app_role(cursor, connection.settings_dict["USER"]) is False  # the owner
        assert dbroles.grant_app_role(cursor, "no_such_role") is False
        assert dbroles.grant_app_role(cursor, preflight.params(preflight.urls()[0])["user"]) is True
    with connection.cursor() as cursor:
        assert dbroles.role_problems(cursor) == []
