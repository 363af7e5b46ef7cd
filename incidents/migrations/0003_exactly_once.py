"""Issue 8, exactly once: a revision holds one exact request per target (as text, never re-encoded), a review
records the hash it approved, a publication is per revision and target, with the fields of the new protocol;
notifications get a durable outbox; heartbeats and sync's pause live in SystemMark. Incidents hold whatever
IsDown sends (no CHECK on severity or stage, title of any length).

Existing rows are carried over: each revision's request becomes its one RevisionRequest (the body as the old
code sent it, jsonb's key order), the hashes are recomputed in the new form (below, frozen here on purpose),
and each approval records the recomputed hash. A publication that would break the one-held-per-incident rule
(a second failed or stuck publication on the same incident, possible before) keeps no order key: it was
waiting for a human already and still is.
"""

import hashlib
import json

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

HOLDING = ("sending", "retry_wait", "reconciling", "failed", "needs_attention")


def _request_sha256(method: str, path: str, body: str) -> str:
    return hashlib.sha256(f"{method} {path}\n".encode() + body.encode("utf-8")).hexdigest()


def _set_sha256(hashes: list[tuple[int, str]]) -> str:
    return hashlib.sha256("\n".join(f"{position} {sha}" for position, sha in sorted(hashes)).encode()).hexdigest()


def requests_from_revisions(apps, schema_editor):
    Revision = apps.get_model("incidents", "Revision")
    RevisionRequest = apps.get_model("incidents", "RevisionRequest")
    Review = apps.get_model("incidents", "Review")
    Publication = apps.get_model("incidents", "Publication")
    for revision in Revision.objects.select_related("draft", "draft__incident").order_by("pk"):
        draft = revision.draft
        body = json.dumps(revision.body, separators=(",", ":"), ensure_ascii=False)
        target = draft.incident.remote_id if revision.method == "PATCH" and draft.incident_id else ""
        sha = _request_sha256(revision.method, revision.path, body)
        request = RevisionRequest.objects.create(
            revision=revision,
            position=0,
            service_id=draft.service_id,
            target_remote_id=target or "",
            method=revision.method,
            path=revision.path,
            body=body,
            sha256=sha,
        )
        revision.sha256 = _set_sha256([(0, sha)])
        revision.save(update_fields=["sha256"])
        Review.objects.filter(revision=revision, decision="approve").update(sha256=revision.sha256)
        holding = set()
        for publication in Publication.objects.filter(revision=revision).order_by("pk"):
            key = request.target_remote_id
            if key and publication.state in HOLDING:
                if Publication.objects.filter(target_remote_id=key, state__in=HOLDING).exists() or key in holding:
                    key = ""
                holding.add(key)
            publication.request = request
            publication.service_id = draft.service_id
            publication.target_remote_id = key
            publication.save(update_fields=["request", "service", "target_remote_id"])


class Migration(migrations.Migration):

    dependencies = [
        ('incidents', '0002_audit_and_review_guards'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='Notification',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(max_length=40)),
                ('subject', models.CharField(max_length=300)),
                ('body', models.TextField()),
                ('recipients', models.JSONField(default=list)),
                ('target_type', models.CharField(blank=True, max_length=40)),
                ('target_id', models.CharField(blank=True, max_length=64)),
                ('state', models.CharField(choices=[('pending', 'Pending'), ('sent', 'Sent'), ('gave_up', 'Gave up')], db_index=True, default='pending', max_length=10)),
                ('attempts', models.PositiveIntegerField(default=0)),
                ('next_attempt_at', models.DateTimeField(db_index=True)),
                ('lease_expires_at', models.DateTimeField(blank=True, null=True)),
                ('last_error', models.TextField(blank=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('sent_at', models.DateTimeField(blank=True, null=True)),
            ],
            options={
                'ordering': ['-created_at', '-id'],
            },
        ),
        migrations.CreateModel(
            name='RevisionRequest',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('position', models.PositiveSmallIntegerField()),
                ('target_remote_id', models.CharField(blank=True, max_length=64)),
                ('method', models.CharField(max_length=10)),
                ('path', models.CharField(max_length=300)),
                ('body', models.TextField()),
                ('sha256', models.CharField(max_length=64)),
            ],
            options={
                'ordering': ['revision', 'position'],
            },
        ),
        migrations.CreateModel(
            name='SystemMark',
            fields=[
                ('name', models.CharField(max_length=200, primary_key=True, serialize=False)),
                ('at', models.DateTimeField()),
                ('detail', models.CharField(blank=True, max_length=300)),
            ],
        ),
        migrations.RemoveConstraint(
            model_name='draft',
            name='draft_state_valid',
        ),
        migrations.RemoveConstraint(
            model_name='incident',
            name='incident_severity_valid',
        ),
        migrations.RemoveConstraint(
            model_name='incident',
            name='incident_stage_valid',
        ),
        migrations.RemoveConstraint(
            model_name='publication',
            name='publication_state_valid',
        ),
        migrations.AddField(
            model_name='incident',
            name='remote_payload',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='publication',
            name='attempt_token',
            field=models.UUIDField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='publication',
            name='checks_failing_since',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='publication',
            name='decision_note',
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name='publication',
            name='duplicate_remote_ids',
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name='publication',
            name='first_sent_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='publication',
            name='service',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='publications', to='incidents.service'),
        ),
        migrations.AddField(
            model_name='publication',
            name='target_remote_id',
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name='publication',
            name='unknown_since',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='publication',
            name='watch_until',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='publishattempt',
            name='request_sha256',
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name='publishattempt',
            name='token',
            field=models.UUIDField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='review',
            name='sha256',
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AlterField(
            model_name='draft',
            name='state',
            field=models.CharField(choices=[('draft', 'Draft'), ('in_review', 'In review'), ('changes_requested', 'Changes requested'), ('approved', 'Approved'), ('publishing', 'Publishing'), ('published', 'Published'), ('failed', 'Failed'), ('needs_attention', 'Needs attention'), ('abandoned', 'Abandoned'), ('rejected', 'Rejected'), ('discarded', 'Discarded')], db_index=True, default='draft', max_length=20),
        ),
        migrations.AlterField(
            model_name='incident',
            name='severity',
            field=models.TextField(choices=[('minor', 'Minor'), ('major', 'Major')], default='minor'),
        ),
        migrations.AlterField(
            model_name='incident',
            name='stage',
            field=models.TextField(choices=[('investigating', 'Investigating'), ('identified', 'Identified'), ('monitoring', 'Monitoring'), ('resolved', 'Resolved')], default='investigating'),
        ),
        migrations.AlterField(
            model_name='incident',
            name='title',
            field=models.TextField(),
        ),
        migrations.AlterField(
            model_name='incidentupdate',
            name='stage',
            field=models.TextField(choices=[('investigating', 'Investigating'), ('identified', 'Identified'), ('monitoring', 'Monitoring'), ('resolved', 'Resolved')]),
        ),
        migrations.AlterField(
            model_name='publication',
            name='revision',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='publications', to='incidents.revision'),
        ),
        migrations.AlterField(
            model_name='publication',
            name='state',
            field=models.CharField(choices=[('queued', 'Queued'), ('sending', 'Sending'), ('retry_wait', 'Waiting to retry'), ('reconciling', 'Checking IsDown'), ('published', 'Published'), ('failed', 'Failed'), ('needs_attention', 'Needs attention'), ('duplicate_detected', 'Duplicate detected'), ('abandoned', 'Abandoned')], db_index=True, default='queued', max_length=20),
        ),
        migrations.AlterField(
            model_name='publishattempt',
            name='kind',
            field=models.CharField(choices=[('send', 'Send'), ('reconcile', 'Check'), ('watch', 'Watch for a twin'), ('verify', 'Verify'), ('delete', 'Delete duplicate')], default='send', max_length=20),
        ),
        migrations.AlterField(
            model_name='publishattempt',
            name='outcome',
            field=models.CharField(blank=True, choices=[('published', 'Published'), ('retry', 'Not processed: retry'), ('rejected', 'Rejected'), ('unknown', 'Outcome unknown'), ('not_sent', 'Not sent'), ('lost', 'Lost with the worker'), ('late', 'Answered after losing the lease'), ('found', 'Found'), ('absent', 'Not there'), ('ambiguous', 'Ambiguous'), ('check_failed', 'Check failed'), ('no_twin', 'No twin'), ('twin_found', 'Twin found'), ('verified', 'Verified'), ('not_verified', 'Not verified'), ('deleted', 'Deleted')], max_length=20),
        ),
        migrations.AddConstraint(
            model_name='draft',
            constraint=models.CheckConstraint(condition=models.Q(('state__in', ['draft', 'in_review', 'changes_requested', 'approved', 'publishing', 'published', 'failed', 'needs_attention', 'abandoned', 'rejected', 'discarded'])), name='draft_state_valid'),
        ),
        migrations.AddConstraint(
            model_name='review',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('decision', 'approve'), _negated=True), models.Q(('sha256', ''), _negated=True), _connector='OR'), name='review_approval_binds_hash'),
        ),
        migrations.AddField(
            model_name='notification',
            name='team',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='notifications', to='incidents.team'),
        ),
        migrations.AddField(
            model_name='revisionrequest',
            name='revision',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='requests', to='incidents.revision'),
        ),
        migrations.AddField(
            model_name='revisionrequest',
            name='service',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='incidents.service'),
        ),
        migrations.AddField(
            model_name='publication',
            name='request',
            field=models.OneToOneField(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='publication', to='incidents.revisionrequest'),
        ),
        migrations.RunPython(requests_from_revisions, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name='publication',
            constraint=models.CheckConstraint(condition=models.Q(('state__in', ['queued', 'sending', 'retry_wait', 'reconciling', 'published', 'failed', 'needs_attention', 'duplicate_detected', 'abandoned'])), name='publication_state_valid'),
        ),
        migrations.AddConstraint(
            model_name='publication',
            constraint=models.UniqueConstraint(fields=('revision', 'service'), name='publication_one_per_revision_target'),
        ),
        migrations.AddConstraint(
            model_name='notification',
            constraint=models.CheckConstraint(condition=models.Q(('state__in', ['pending', 'sent', 'gave_up'])), name='notification_state_valid'),
        ),
        migrations.AddConstraint(
            model_name='revisionrequest',
            constraint=models.UniqueConstraint(fields=('revision', 'position'), name='revision_request_position_unique'),
        ),
        migrations.AddConstraint(
            model_name='revisionrequest',
            constraint=models.UniqueConstraint(fields=('revision', 'service'), name='revision_request_one_per_service'),
        ),
        migrations.RemoveField(
            model_name='publication',
            name='sending_started_at',
        ),
        migrations.RemoveField(
            model_name='publishattempt',
            name='request_body',
        ),
        migrations.RemoveField(
            model_name='revision',
            name='body',
        ),
        migrations.RemoveField(
            model_name='revision',
            name='method',
        ),
        migrations.RemoveField(
            model_name='revision',
            name='path',
        ),
        migrations.AddConstraint(
            model_name='publication',
            constraint=models.UniqueConstraint(condition=models.Q(('state__in', ['sending', 'retry_wait', 'reconciling', 'failed', 'needs_attention']), models.Q(('target_remote_id', ''), _negated=True)), fields=('target_remote_id',), name='publication_one_holding_per_incident'),
        ),
    ]
