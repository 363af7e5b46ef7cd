"""Two database roles: the owner runs migrations; the app runs as a role that cannot rewrite history.

The app role may read and write the app's tables, but on the audit table it may only SELECT and INSERT: no
UPDATE, DELETE or TRUNCATE privilege, no ownership (so no ALTER TABLE … DISABLE TRIGGER), and it is not a
superuser (so no ``session_replication_role``). Triggers refuse UPDATE, DELETE and TRUNCATE on the audit table
even for its owner (migrations 0002 and 0005).

``grant_app_role`` is run by migration 0005 as the owner, and again by ``manage.py grant_app_role`` whenever an
operator needs it (a new app role); default privileges give the app role the same rights on tables that later
migrations create. ``role_problems`` is what ``check --deploy`` reports about the role the app connects as.
"""

from __future__ import annotations

from typing import Any

AUDIT_TABLE = "incidents_auditevent"
CHECKPOINT_TABLE = "incidents_auditcheckpoint"
ENTRY_TABLE = "incidents_auditentry"
# History only grows: on these the app may read and append, nothing else (each is limited once its migration made
# it: checkpoints from 0015 on, entries waiting to be sealed from 0018 on).
INSERT_ONLY_TABLES = (AUDIT_TABLE, CHECKPOINT_TABLE, ENTRY_TABLE)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def role_exists(cursor: Any, role: str) -> bool:
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
    return cursor.fetchone() is not None


def grant_app_role(cursor: Any, role: str) -> bool:
    """Give ``role`` the app's privileges on everything in the public schema, and the audit table's limits.
    Runs as the owner; idempotent. False (and nothing done) when the role does not exist or is the owner."""
    cursor.execute("SELECT current_user")
    (owner,) = cursor.fetchone()
    if not role or role == owner or not role_exists(cursor, role):
        return False
    app = _quote(role)
    for statement in (
        f"GRANT USAGE ON SCHEMA public TO {app}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {app}",
    ):
        cursor.execute(statement)
    for table in INSERT_ONLY_TABLES:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        if cursor.fetchone()[0]:
            # History only grows: the app may read and append, nothing else.
            cursor.execute(f"REVOKE ALL ON {table} FROM {app}")
            cursor.execute(f"GRANT SELECT, INSERT ON {table} TO {app}")
    return True


def role_problems(cursor: Any) -> list[str]:
    """What is unsafe about the role this connection uses, for the app to run as."""
    cursor.execute(
        "SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole FROM pg_roles r WHERE r.rolname = current_user"
    )
    name, superuser, bypass_rls, create_role = cursor.fetchone()
    problems = []
    if superuser:
        problems.append(f"the app connects as {name}, a superuser: it could turn the audit log's triggers off")
    if create_role:
        problems.append(f"the app's role {name} may create roles")
    if bypass_rls:
        problems.append(f"the app's role {name} bypasses row-level security")
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [AUDIT_TABLE])
    if not cursor.fetchone()[0]:
        return [*problems, "the database is not migrated yet (no audit table): run migrate as the owner"]
    cursor.execute(
        "SELECT pg_get_userbyid(c.relowner) = current_user FROM pg_class c WHERE c.relname = %s", [AUDIT_TABLE]
    )
    row = cursor.fetchone()
    if row and row[0]:
        problems.append(f"the app's role {name} owns the audit table: it could alter or truncate it")
    for table in INSERT_ONLY_TABLES:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        if not cursor.fetchone()[0]:
            continue
        for privilege in ("UPDATE", "DELETE", "TRUNCATE"):
            cursor.execute("SELECT has_table_privilege(current_user, %s, %s)", [table, privilege])
            if cursor.fetchone()[0] and not superuser:
                problems.append(f"the app's role {name} has the {privilege} privilege on {table}")
    return problems
