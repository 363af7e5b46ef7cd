"""Database guards the ORM cannot express.

1. The audit table refuses UPDATE and DELETE (a trigger), so history can only grow.
2. Review's copies of the revision's author and last editor must match the revision (a composite foreign
   key), so the four-eyes CHECK on Review cannot be dodged by lying about who wrote the revision.
"""

from django.db import migrations

AUDIT_SQL = """
CREATE OR REPLACE FUNCTION incidents_auditevent_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'incidents_auditevent is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER incidents_auditevent_append_only
    BEFORE UPDATE OR DELETE ON incidents_auditevent
    FOR EACH ROW EXECUTE FUNCTION incidents_auditevent_refuse_change();
"""

AUDIT_REVERSE_SQL = """
DROP TRIGGER IF EXISTS incidents_auditevent_append_only ON incidents_auditevent;
DROP FUNCTION IF EXISTS incidents_auditevent_refuse_change();
"""

REVIEW_SQL = """
ALTER TABLE incidents_review
    ADD CONSTRAINT review_matches_revision_author_editor
    FOREIGN KEY (revision_id, revision_author_id, revision_last_editor_id)
    REFERENCES incidents_revision (id, author_id, last_editor_id)
    DEFERRABLE INITIALLY DEFERRED;
"""

REVIEW_REVERSE_SQL = "ALTER TABLE incidents_review DROP CONSTRAINT review_matches_revision_author_editor;"


class Migration(migrations.Migration):
    dependencies = [("incidents", "0001_initial")]

    operations = [
        migrations.RunSQL(AUDIT_SQL, AUDIT_REVERSE_SQL),
        migrations.RunSQL(REVIEW_SQL, REVIEW_REVERSE_SQL),
    ]
