"""The text searches a page offers are served by a trigram index (pg_trgm), not a scan of the table: the audit
log's "target contains" at a million events, the incident list's title search. The plans are read with scans
discouraged, so the test asks "can an index serve this query?", whatever the table's size and statistics today."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from incidents import selectors
from incidents.models import AuditEvent, Incident

pytestmark = pytest.mark.django_db


def plan(queryset) -> str:
    with transaction.atomic(), connection.cursor() as cursor:
        # Scans of the table and plain index scans (e.g. walking another index in sort order) discouraged: what
        # is left cheap is a bitmap scan, which only an index on the searched expression can give.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")
        return queryset.explain()


def test_the_audit_logs_target_contains_filter_can_use_a_trigram_index(auditor, platform):
    # The selector filters with exactly the lookup the index is built for ...
    sql = str(selectors.filtered_events(auditor, {"target": "checkout"}).query)
    assert 'UPPER("incidents_auditevent"."target_label"::text) LIKE UPPER(' in sql
    # ... and that lookup can be served by the index rather than a scan of the table.
    assert "audit_target_label_trgm" in plan(AuditEvent.objects.filter(target_label__icontains="checkout").order_by())


def test_the_incident_lists_title_search_can_use_a_trigram_index(responder):
    sql = str(selectors.incidents_matching(responder, {"q": "checkout"}).query)
    assert 'UPPER("incidents_incident"."title"::text) LIKE UPPER(' in sql
    assert "incident_title_trgm" in plan(Incident.objects.filter(title__icontains="checkout").order_by())
