"""Publishing on a budget: what one publication costs the worker in transactions and statements, and the HTTP
client a worker keeps. (Before issue 13: 3 transactions and 35 statements for a create; now 2 and 25, of which
10 are the two audit appends.)"""

from __future__ import annotations

import re
from unittest import mock

import pytest
import respx
from django.db import connection
from django.test.utils import CaptureQueriesContext

from incidents import enqueue, publishing
from incidents.models import AuditEvent, Incident, PublicationState
from tests.test_audit_sealer import seal_all
from tests.waiting import wait_for

from .conftest import sandbox_requests
from .dbproxy import DatabaseProxy
from .factories import approved_publication, update_publication
from .test_protocol import incident_json

BASE = "http://isdown.test"
# Statements that are the audit log's own (audit.py owns them: its append is measured by its own bench; the
# suite seals inline, production's append is one INSERT of an entry).
AUDIT_MARKERS = ("incidents_auditevent", "incidents_auditentry", "pg_advisory", "SAVEPOINT")


@pytest.fixture
def fake_isdown(settings):
    settings.ISDOWN_API_URL = BASE
    with respx.mock(base_url=BASE, assert_all_called=False) as mock_api:
        yield mock_api


def run_measured(publication_id):
    """``process`` as a worker runs it, counting transactions (commits) and statements (BEGIN/COMMIT apart)."""
    with (
        CaptureQueriesContext(connection) as queries,
        mock.patch.object(connection, "commit", wraps=connection.commit) as commit,
    ):
        step = publishing.process(publication_id=publication_id, task_id="t-1", client=publishing.make_client())
    statements = [q["sql"] for q in queries.captured_queries if q["sql"] not in ("BEGIN", "COMMIT")]
    own = [sql for sql in statements if not any(marker in sql for marker in AUDIT_MARKERS)]
    return step, commit.call_count, statements, own


@pytest.mark.django_db(transaction=True)
def test_a_create_is_published_in_two_transactions_and_at_most_15_statements_of_its_own(
    fake_isdown, api_service, responder, deferred_sealing
):
    fake_isdown.post("/api/v2/incidents").respond(201, json={"data": incident_json("55001")})
    publication = approved_publication(service=api_service, author=responder)

    step, transactions, statements, own = run_measured(publication.pk)

    assert step.state == PublicationState.PUBLISHED
    # Before: 3 transactions (claim, fence, record), 35 statements, 25 of them publishing's own.
    assert transactions == 2, statements
    assert len(own) <= 15, "\n".join(own)
    assert len(statements) <= 25, "\n".join(statements)
    # Production's appends (deferred sealing): one INSERT each, no lock, no savepoint.
    audit_statements = [sql for sql in statements if any(marker in sql for marker in AUDIT_MARKERS)]
    assert [sql.split(" (")[0] for sql in audit_statements] == ['INSERT INTO "incidents_auditentry"'] * 2
    seal_all()  # the approval's events too (recorded by the factory, also deferred)
    # Each state change still carries its audit event, in its own transaction: sending, then published.
    events = AuditEvent.objects.filter(target_type="publication", target_id=str(publication.pk)).order_by("pk")
    assert list(events.values_list("action", flat=True)) == [
        "publication.sending",
        "publication.published",
    ]


@pytest.mark.django_db(transaction=True)
def test_an_update_is_published_in_two_transactions_and_at_most_18_statements_of_its_own(
    fake_isdown, api_service, responder
):
    incident = Incident.objects.create(service=api_service, remote_id="55001", title="Elevated API errors")
    publication = update_publication(incident=incident, author=responder, description="Fixed.", stage="monitoring")
    fake_isdown.patch("/api/v2/incidents/55001").respond(200, json={"data": incident_json("55001")})

    step, transactions, statements, own = run_measured(publication.pk)

    assert step.state == PublicationState.PUBLISHED
    # Before: 3 transactions (claim, fence, record).
    assert transactions == 2, statements
    assert len(own) <= 18, "\n".join(own)


@pytest.mark.django_db(transaction=True)
def test_a_send_selects_no_json_result_nor_the_draft_text_or_incident_row(fake_isdown, api_service, responder):
    fake_isdown.post("/api/v2/incidents").respond(201, json={"data": incident_json("55001")})
    publication = approved_publication(service=api_service, author=responder)

    _, _, statements, _ = run_measured(publication.pk)

    locks = [
        sql
        for sql in statements
        if sql.startswith('SELECT "incidents_publication"."id"') and "FOR NO KEY UPDATE" in sql
    ]
    assert len(locks) == 2  # the claim and the record, nothing in between
    for sql in locks:
        selected = sql.split(" FROM ")[0]
        assert '"incidents_publication"."result"' not in selected
        assert "incidents_incident" not in sql
        # Of the draft, only the group a create joins (issue 12's fan-out): never its text or its editors.
        draft_columns = set(re.findall(r'"incidents_draft"\."(\w+)"', selected))
        assert draft_columns <= {"id", "group_id"}, draft_columns


# --- The worker's database connection -------------------------------------------------------------------------------
@pytest.fixture
def db_proxy(transactional_db):
    data = connection.settings_dict
    proxy = DatabaseProxy(data.get("HOST") or "127.0.0.1", int(data.get("PORT") or 5432))
    yield proxy
    proxy.close()


def through(proxy) -> str:
    user = connection.settings_dict.get("USER") or ""
    password = f":{connection.settings_dict['PASSWORD']}" if connection.settings_dict.get("PASSWORD") else ""
    return f"postgres://{user}{password}@127.0.0.1:{proxy.port}/{connection.settings_dict['NAME']}"


def published(publication) -> bool:
    publication.refresh_from_db()
    return publication.state == PublicationState.PUBLISHED


@pytest.mark.worker
def test_a_worker_keeps_one_database_connection_across_publications(start_worker, db_proxy, service, author):
    worker = start_worker(DATABASE_URL=through(db_proxy))
    first = approved_publication(service=service, author=author, title="First")
    enqueue.publication(first.pk)
    wait_for(lambda: published(first), what="the first publication", context=worker.log_text)
    opened = db_proxy.accepted

    later = [approved_publication(service=service, author=author, title=f"Later {n}") for n in range(5)]
    for publication in later:
        enqueue.publication(publication.pk)
    for publication in later:
        wait_for(lambda p=publication: published(p), what="every publication", context=worker.log_text)

    # Before: Celery's Django fixup closed the connection after every task, so each one opened a new one.
    assert db_proxy.accepted - opened <= 1, f"{db_proxy.accepted - opened} new connections for 5 publications"


@pytest.mark.worker
def test_a_task_that_the_database_refuses_is_retried_and_publishes_without_a_sweep(
    start_worker, db_proxy, service, author
):
    worker = start_worker(DATABASE_URL=through(db_proxy))
    publication = approved_publication(service=service, author=author)
    db_proxy.refusing = True
    db_proxy.cut()  # a restart: the worker's connection is gone and new ones are refused for a while
    enqueue.publication(publication.pk)
    wait_for(lambda: db_proxy.refused >= 1, what="the worker to meet the refusal", context=worker.log_text)
    db_proxy.refusing = False

    # No beat runs here: only the task's own retry can publish it.
    wait_for(lambda: published(publication), timeout=30, what="the retried task to publish", context=worker.log_text)
    assert len(sandbox_requests("POST")) == 1


# --- Enqueue marks the row before the message leaves ----------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_enqueue_marks_the_row_before_the_message_leaves_and_clears_it_when_none_left(api_service, responder):
    # A worker that took the message at once found the row locked by the mark written after sending, and its claim
    # skips locked rows: the publication waited for a sweep.
    from incidents.models import Publication

    publication = approved_publication(service=api_service, author=responder)
    Publication.objects.filter(pk=publication.pk).update(last_enqueued_at=None)
    seen = []

    def send_task(*args, **kwargs):
        seen.append(Publication.objects.get(pk=publication.pk).last_enqueued_at)

    with mock.patch.object(enqueue.current_app, "send_task", side_effect=send_task):
        assert enqueue.publication(publication.pk) is True
    assert len(seen) == 1 and seen[0] is not None

    with mock.patch.object(enqueue.current_app, "send_task", side_effect=OSError("broker down")):
        assert enqueue.publication(publication.pk) is False
    assert Publication.objects.get(pk=publication.pk).last_enqueued_at is None  # the sweeper's turn, at once
