"""Two database roles. The audit table refuses TRUNCATE too (a trigger, for its owner as well), and the app's
role (DATABASE_APP_ROLE) gets its privileges: everything it needs, but on the audit table only SELECT and INSERT.
Run as the owner; with a single role (no app role in the database) the grants are skipped and ``check --deploy``
says so."""

from django.conf import settings
from django.db import migrations

TRUNCATE_SQL = """
CREATE TRIGGER incidents_auditevent_no_truncate
    BEFORE TRUNCATE ON incidents_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION incidents_auditevent_refuse_change();
"""
TRUNCATE_REVERSE_SQL = "DROP TRIGGER IF EXISTS incidents_auditevent_no_truncate ON incidents_auditevent;"


def grant(apps, schema_editor):
    from incidents.dbroles import grant_app_role

    with schema_editor.connection.cursor() as cursor:
        grant_app_role(cursor, settings.DATABASE_APP_ROLE)


class Migration(migrations.Migration):
    dependencies = [("incidents", "0004_revisions_are_immutable"), ("sandbox", "0003_tolerant_incident_columns")]

    operations = [
        migrations.RunSQL(TRUNCATE_SQL, TRUNCATE_REVERSE_SQL),
        migrations.RunPython(grant, migrations.RunPython.noop),
    ]
