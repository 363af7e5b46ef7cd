"""Trigram indexes for the two "contains" searches (the audit log's target label, the incident list's title).

pg_trgm is a trusted extension (PostgreSQL 13+): the database's owner, who runs migrations, may create it. The
indexes are written in SQL: Django renders an expression index with an operator class inside one pair of
parentheses too many for GIN (a syntax error); the model state still carries them (models.py)."""

import django.contrib.postgres.indexes
import django.db.models.functions.text
from django.contrib.postgres.operations import TrigramExtension
from django.db import migrations

INDEXES = [
    ("auditevent", "incidents_auditevent", "target_label", "audit_target_label_trgm"),
    ("incident", "incidents_incident", "title", "incident_title_trgm"),
]


class Migration(migrations.Migration):
    dependencies = [
        ("incidents", "0008_user_preference"),
    ]

    operations = [
        TrigramExtension(),
        *(
            migrations.SeparateDatabaseAndState(
                database_operations=[
                    migrations.RunSQL(
                        f'CREATE INDEX "{name}" ON "{table}" USING gin ((UPPER("{column}")) gin_trgm_ops)',
                        f'DROP INDEX "{name}"',
                    )
                ],
                state_operations=[
                    migrations.AddIndex(
                        model_name=model,
                        index=django.contrib.postgres.indexes.GinIndex(
                            django.contrib.postgres.indexes.OpClass(
                                django.db.models.functions.text.Upper(column), name="gin_trgm_ops"
                            ),
                            name=name,
                        ),
                    )
                ],
            )
            for model, table, column, name in INDEXES
        ),
    ]
