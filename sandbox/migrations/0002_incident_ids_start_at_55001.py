from django.db import migrations


class Migration(migrations.Migration):
    """Incident ids look like IsDown's (the documented example is 55001) rather than 1, 2, 3."""

    dependencies = [
        ("sandbox", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(
            "SELECT setval(pg_get_serial_sequence('sandbox_sandboxincident', 'id'), 55000, true);",
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
