"""Every publication has its request and target now; revisions and their requests can no longer change.

A revision is what a reviewer read and approved: once written, the database refuses UPDATE and DELETE on it
and on its requests (a trigger), so the row an approval points at is the row the worker sends.
"""

import django.db.models.deletion
from django.db import migrations, models

IMMUTABLE_SQL = """
CREATE OR REPLACE FUNCTION incidents_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is immutable: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER incidents_revision_immutable
    BEFORE UPDATE OR DELETE ON incidents_revision
    FOR EACH ROW EXECUTE FUNCTION incidents_refuse_change();
CREATE TRIGGER incidents_revisionrequest_immutable
    BEFORE UPDATE OR DELETE ON incidents_revisionrequest
    FOR EACH ROW EXECUTE FUNCTION incidents_refuse_change();
"""

IMMUTABLE_REVERSE_SQL = """
DROP TRIGGER IF EXISTS incidents_revisionrequest_immutable ON incidents_revisionrequest;
DROP TRIGGER IF EXISTS incidents_revision_immutable ON incidents_revision;
DROP FUNCTION IF EXISTS incidents_refuse_change();
"""


class Migration(migrations.Migration):
    dependencies = [("incidents", "0003_exactly_once")]

    operations = [
        migrations.AlterField(
            model_name="publication",
            name="request",
            field=models.OneToOneField(
                on_delete=django.db.models.deletion.PROTECT, related_name="publication", to="incidents.revisionrequest"
            ),
        ),
        migrations.AlterField(
            model_name="publication",
            name="service",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="publications", to="incidents.service"
            ),
        ),
        migrations.RunSQL(IMMUTABLE_SQL, IMMUTABLE_REVERSE_SQL),
    ]
