"""Check that PostgreSQL and Redis answer before anything else starts, and create the database if missing.

Run as ``python -m isdown_admin.preflight [--create-db]``. Reads DATABASE_URL and REDIS_URL like the
settings do, needs no Django set-up, and stops at once with a message that says what to start.
"""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import unquote, urlsplit

HOW_TO_START = (
    "Start PostgreSQL and Redis on localhost (for example: docker compose up -d db redis), "
    "or point DATABASE_URL / REDIS_URL at running servers."
)


def fail(message: str) -> None:
    print(f"preflight: {message}\n  {HOW_TO_START}", file=sys.stderr)
    sys.exit(2)


def check_postgres(url: str, create: bool) -> None:
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    dbname = unquote(parts.path.lstrip("/")) or "postgres"
    params = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "user": unquote(parts.username or "") or None,
        "password": unquote(parts.password or "") or None,
        "connect_timeout": 3,
    }
    try:
        with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone()
            if not exists and create:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                print(f"preflight: created database {dbname}")
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fail(f"cannot reach PostgreSQL at {params['host']}:{params['port']} ({first_line})")


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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--create-db", action="store_true", help="create the database if it is missing")
    args = parser.parse_args()
    check_postgres(os.environ.get("DATABASE_URL") or "postgres://root@127.0.0.1:5432/isdown_admin", args.create_db)
    check_redis(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    print("preflight: PostgreSQL and Redis are reachable")


if __name__ == "__main__":
    main()
