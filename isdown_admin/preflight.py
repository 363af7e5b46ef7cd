"""Check that PostgreSQL and Redis answer before anything else starts; on a development machine, also create
the two database roles and the database.

    python -m isdown_admin.preflight [--create-db]

Reads the environment like the settings do, needs no Django set-up, and stops at once with a message that says
what to start or to do.

- ``DATABASE_URL``: the app's role (least privilege), default ``postgres://isdown_app@127.0.0.1:5432/isdown_admin``.
- ``DATABASE_OWNER_URL``: the owner, who runs migrations; default: DATABASE_URL with the user ``isdown_owner``.
- ``DATABASE_ADMIN_URL``: only for ``--create-db``, a role that may create roles and databases (default
  ``postgres://root@<host>:<port>/postgres``, as on this project's development machines).

``--create-db`` creates what is missing: the owner role (LOGIN, CREATEDB: the tests create their database as
the owner), the app role (LOGIN, nothing more), and the database owned by the owner. A development database
made before the roles existed is handed over to the owner (its tables, sequences and functions), and a stale
test database the owner could not drop is dropped. Production never runs this: an operator creates the roles
(README, Deployment).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    import psycopg

HOW_TO_START = (
    "Start PostgreSQL and Redis on localhost (for example: docker compose up -d db redis), "
    "or point DATABASE_URL / REDIS_URL at running servers."
)
DEFAULT_APP_URL = "postgres://isdown_app@127.0.0.1:5432/isdown_admin"


def fail(message: str, hint: str = HOW_TO_START) -> NoReturn:
    print(f"preflight: {message}\n  {hint}", file=sys.stderr)
    sys.exit(2)


def with_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def urls() -> tuple[str, str, str]:
    app = os.environ.get("DATABASE_URL") or DEFAULT_APP_URL
    owner = os.environ.get("DATABASE_OWNER_URL") or with_user(app, "isdown_owner")
    parts = urlsplit(app)
    admin_default = f"postgres://root@{parts.hostname or '127.0.0.1'}:{parts.port or 5432}/postgres"
    return app, owner, os.environ.get("DATABASE_ADMIN_URL") or admin_default


class ConnectParams(TypedDict):
    host: str
    port: int
    user: str | None
    password: str | None
    dbname: str
    connect_timeout: int


def params(url: str, *, dbname: str | None = None) -> ConnectParams:
    parts = urlsplit(url)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "user": unquote(parts.username or "") or None,
        "password": unquote(parts.password or "") or None,
        "dbname": dbname or unquote(parts.path.lstrip("/")) or "postgres",
        "connect_timeout": 3,
    }


def connect(url: str, *, dbname: str | None = None) -> psycopg.Connection[tuple[Any, ...]]:
    import psycopg

    settings = params(url, dbname=dbname)
    try:
        return psycopg.connect(autocommit=True, **settings)
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fail(
            f"cannot connect to PostgreSQL at {settings['host']}:{settings['port']} "
            f"as {settings['user']} ({first_line})"
        )


def create_roles_and_database(app_url: str, owner_url: str, admin_url: str) -> None:
    from psycopg import sql

    app, owner = params(app_url), params(owner_url)
    dbname = app["dbname"]
    app_role, owner_role = app["user"], owner["user"]
    if not app_role or not owner_role:
        # libpq would fall back to the OS user; the roles this creates must be named.
        fail(
            "DATABASE_URL and DATABASE_OWNER_URL must each name a role",
            "For example DATABASE_URL=postgres://isdown_app@127.0.0.1:5432/isdown_admin",
        )
    with connect(admin_url) as admin:
        for role, extra in ((owner_role, sql.SQL(" CREATEDB")), (app_role, sql.SQL(""))):
            if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                admin.execute(sql.SQL("CREATE ROLE {} LOGIN{}").format(sql.Identifier(role), extra))
                print(f"preflight: created role {role}")
        row = admin.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [dbname]).fetchone()
        if row is None:
            admin.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(owner_role))
            )
            print(f"preflight: created database {dbname}, owned by {owner_role}")
        elif row[0] != owner_role:
            admin.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(dbname), sql.Identifier(owner_role))
            )
            print(f"preflight: database {dbname} now belongs to {owner_role} (it belonged to {row[0]})")
        test_db = f"test_{dbname}"
        stale = admin.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [test_db]
        ).fetchone()
        if stale and stale[0] != owner_role:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(test_db)))
            print(f"preflight: dropped {test_db}, made by {stale[0]} before the roles existed")
    hand_over(dbname=dbname, owner=owner_role, admin_url=admin_url)


def hand_over(*, dbname: str, owner: str, admin_url: str) -> None:
    """Give the owner whatever another role created in the public schema (a database from before the roles)."""
    from psycopg import sql

    with connect(admin_url, dbname=dbname) as admin:
        tables = admin.execute(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S') "
            "AND pg_get_userbyid(c.relowner) <> %s",
            [owner],
        ).fetchall()
        for name, kind in tables:
            keyword = {"v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}.get(kind, "TABLE")
            admin.execute(
                sql.SQL("ALTER {} public.{} OWNER TO {}").format(
                    sql.SQL(keyword), sql.Identifier(name), sql.Identifier(owner)
                )
            )
        functions = admin.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) <> %s",
            [owner],
        ).fetchall()
        for (signature,) in functions:
            admin.execute(sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(sql.SQL(signature), sql.Identifier(owner)))
        if tables or functions:
            print(f"preflight: handed {len(tables)} relation(s) and {len(functions)} function(s) over to {owner}")


def check_postgres(app_url: str, owner_url: str) -> None:
    for url in (owner_url, app_url):
        with connect(url) as conn:
            conn.execute("SELECT 1")


def check_redis(url: str) -> None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        parts = urlsplit(url)
        fail(f"cannot reach Redis at {parts.hostname}:{parts.port or 6379} ({exc})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--create-db", action="store_true", help="create the roles and the database if missing (development)"
    )
    args = parser.parse_args()
    app_url, owner_url, admin_url = urls()
    if args.create_db:
        create_roles_and_database(app_url, owner_url, admin_url)
    check_postgres(app_url, owner_url)
    check_redis(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    print("preflight: PostgreSQL (owner and app roles) and Redis are reachable")


if __name__ == "__main__":
    main()
