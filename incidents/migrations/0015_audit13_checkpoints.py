"""Signed checkpoints of the audit chain (issue 13): an insert-only table. Triggers refuse UPDATE, DELETE and
TRUNCATE (for the owner too); the app's role may only SELECT and INSERT there (dbroles.grant_app_role, run again
here as the owner)."""

from django.conf import settings
from django.db import migrations, models

GUARD_SQL = """
CREATE OR REPLACE FUNCTION incidents_insert_only_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER incidents_auditcheckpoint_append_only
    BEFORE UPDATE OR DELETE ON incidents_auditcheckpoint
    FOR EACH ROW EXECUTE FUNCTION incidents_insert_only_refuse_change();
CREATE TRIGGER incidents_auditcheckpoint_no_truncate
    BEFORE TRUNCATE ON incidents_auditcheckpoint
    FOR EACH STATEMENT EXECUTE FUNCTION incidents_insert_only_refuse_change();
"""

GUARD_REVERSE_SQL = """
DROP TRIGGER IF EXISTS incidents_auditcheckpoint_no_truncate ON incidents_auditcheckpoint;
DROP TRIGGER IF EXISTS incidents_auditcheckpoint_append_only ON incidents_auditcheckpoint;
DROP FUNCTION IF EXISTS incidents_insert_only_refuse_change();
"""


def grant(apps, schema_editor):
    from incidents.dbroles import grant_app_role

    with schema_editor.connection.cursor() as cursor:
        grant_app_role(cursor, settings.DATABASE_APP_ROLE)


class Migration(migrations.Migration):
    dependencies = [("incidents", "0014_alerts_scheduled_publication")]

    operations = [
        migrations.CreateModel(
            name="AuditCheckpoint",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("seq", models.BigIntegerField()),
                ("hash", models.CharField(max_length=64)),
                ("signed_at", models.DateTimeField()),
                ("reason", models.CharField(max_length=20)),
                ("public_key", models.CharField(max_length=64)),
                ("signature", models.CharField(max_length=100)),
            ],
            options={
                "ordering": ["-id"],
                "indexes": [models.Index(fields=["seq"], name="audit_checkpoint_seq")],
            },
        ),
        migrations.RunSQL(GUARD_SQL, GUARD_REVERSE_SQL),
        migrations.RunPython(grant, migrations.RunPython.noop),
    ]
