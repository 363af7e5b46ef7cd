"""Appends that do not serialise the app (issue 13): ``audit.record`` writes an AuditEntry in the caller's
transaction, and the sealer chains committed entries into AuditEvent as version-2 rows (``chain_version``,
``entry_id`` unique: no entry sealed twice). The entry table is insert-only like the audit table: triggers refuse
UPDATE, DELETE and TRUNCATE (for the owner too); the app's role may only SELECT and INSERT there
(dbroles.grant_app_role, run again here as the owner). Adding the columns rewrites no row (a constant default)."""

from django.conf import settings
from django.db import migrations, models

import incidents.models

GUARD_SQL = """
CREATE OR REPLACE FUNCTION incidents_insert_only_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER incidents_auditentry_append_only
    BEFORE UPDATE OR DELETE ON incidents_auditentry
    FOR EACH ROW EXECUTE FUNCTION incidents_insert_only_refuse_change();
CREATE TRIGGER incidents_auditentry_no_truncate
    BEFORE TRUNCATE ON incidents_auditentry
    FOR EACH STATEMENT EXECUTE FUNCTION incidents_insert_only_refuse_change();
"""

GUARD_REVERSE_SQL = """
DROP TRIGGER IF EXISTS incidents_auditentry_no_truncate ON incidents_auditentry;
DROP TRIGGER IF EXISTS incidents_auditentry_append_only ON incidents_auditentry;
"""


def grant(apps, schema_editor):
    from incidents.dbroles import grant_app_role

    with schema_editor.connection.cursor() as cursor:
        grant_app_role(cursor, settings.DATABASE_APP_ROLE)


class Migration(migrations.Migration):

    dependencies = [
        ('incidents', '0017_audit13_verifications'),
    ]

    operations = [
        migrations.AddField(
            model_name='auditevent',
            name='chain_version',
            field=models.SmallIntegerField(db_default=1, default=1),
        ),
        migrations.AddField(
            model_name='auditevent',
            name='entry_id',
            field=models.BigIntegerField(blank=True, null=True, unique=True),
        ),
        migrations.CreateModel(
            name='AuditEntry',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('xid', models.BigIntegerField(db_default=incidents.models.CurrentTransactionId())),
                ('created_at', models.DateTimeField()),
                ('actor_id', models.BigIntegerField(blank=True, null=True)),
                ('actor_label', models.CharField(max_length=150)),
                ('team_id', models.BigIntegerField(blank=True, null=True)),
                ('team_label', models.CharField(blank=True, max_length=100)),
                ('action', models.CharField(max_length=64)),
                ('target_type', models.CharField(blank=True, max_length=40)),
                ('target_id', models.CharField(blank=True, max_length=64)),
                ('target_label', models.CharField(blank=True, max_length=300)),
                ('summary', models.CharField(max_length=500)),
                ('changes', models.JSONField(blank=True, default=dict)),
                ('context', models.JSONField(blank=True, default=dict)),
            ],
            options={
                'indexes': [models.Index(fields=['xid', 'id'], name='audit_entry_xid_id')],
            },
        ),
        migrations.RunSQL(GUARD_SQL, GUARD_REVERSE_SQL),
        migrations.RunPython(grant, migrations.RunPython.noop),
    ]
