"""Four eyes over every editor: everyone who ever saved a version of a draft is its co-author, and no co-author
may review it. Drafts keep their editors; a revision snapshots them (sorted); a review copies them, a composite
foreign key makes sure the copy is the revision's, and a CHECK refuses a reviewer among them.

Existing drafts and revisions get their author and last editor as editors (who else saved them was not kept);
the revisions' immutability trigger is switched off for that one backfill, by the owner, inside this migration.
"""

import django.contrib.postgres.fields
from django.conf import settings
from django.db import migrations, models


BACKFILL_SQL = """
SET CONSTRAINTS ALL IMMEDIATE;
UPDATE incidents_draft SET editors = ARRAY(SELECT DISTINCT unnest(ARRAY[author_id, last_editor_id]) ORDER BY 1);
ALTER TABLE incidents_revision DISABLE TRIGGER incidents_revision_immutable;
UPDATE incidents_revision SET editors = ARRAY(SELECT DISTINCT unnest(ARRAY[author_id, last_editor_id]) ORDER BY 1);
ALTER TABLE incidents_revision ENABLE TRIGGER incidents_revision_immutable;
UPDATE incidents_review AS review SET revision_editors = revision.editors
    FROM incidents_revision AS revision WHERE revision.id = review.revision_id;
"""

GUARDS_SQL = """
ALTER TABLE incidents_review
    ADD CONSTRAINT review_matches_revision_editors
    FOREIGN KEY (revision_id, revision_editors) REFERENCES incidents_revision (id, editors)
    DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE incidents_review
    ADD CONSTRAINT review_four_eyes_every_editor CHECK (NOT (reviewer_id = ANY (revision_editors)));
"""

GUARDS_REVERSE_SQL = """
ALTER TABLE incidents_review DROP CONSTRAINT review_four_eyes_every_editor;
ALTER TABLE incidents_review DROP CONSTRAINT review_matches_revision_editors;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("incidents", "0005_database_roles"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="draft",
            name="editors",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.BigIntegerField(), default=list, size=None
            ),
        ),
        migrations.AddField(
            model_name="review",
            name="revision_editors",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.BigIntegerField(), default=list, size=None
            ),
        ),
        migrations.AddField(
            model_name="revision",
            name="editors",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.BigIntegerField(), default=list, size=None
            ),
        ),
        migrations.RunSQL(BACKFILL_SQL, migrations.RunSQL.noop),
        migrations.AddConstraint(
            model_name="revision",
            constraint=models.UniqueConstraint(fields=("id", "editors"), name="revision_id_editors"),
        ),
        migrations.RunSQL(GUARDS_SQL, GUARDS_REVERSE_SQL),
    ]
