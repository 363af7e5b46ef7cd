"""A publication IsDown refused for good can be superseded: its draft is edited and resubmitted as a new revision.
The state is not a holding one, so the partial unique index lets the publications behind it go on."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('incidents', '0006_every_editor'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='publication',
            name='publication_state_valid',
        ),
        migrations.AlterField(
            model_name='publication',
            name='state',
            field=models.CharField(choices=[('queued', 'Queued'), ('sending', 'Sending'), ('retry_wait', 'Waiting to retry'), ('reconciling', 'Checking IsDown'), ('published', 'Published'), ('failed', 'Failed'), ('needs_attention', 'Needs attention'), ('duplicate_detected', 'Duplicate detected'), ('abandoned', 'Abandoned'), ('superseded', 'Superseded')], db_index=True, default='queued', max_length=20),
        ),
        migrations.AddConstraint(
            model_name='publication',
            constraint=models.CheckConstraint(condition=models.Q(('state__in', ['queued', 'sending', 'retry_wait', 'reconciling', 'published', 'failed', 'needs_attention', 'duplicate_detected', 'abandoned', 'superseded'])), name='publication_state_valid'),
        ),
    ]
