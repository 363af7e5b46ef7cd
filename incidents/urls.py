from django.urls import path

from .views import (
    account,
    alerts,
    audit,
    dashboard,
    drafts,
    incidents,
    publications,
    reviews,
    services,
    team_templates,
)

app_name = "incidents"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("services/<int:pk>/", services.service_detail, name="service_detail"),
    path("incidents/", incidents.incident_list, name="incident_list"),
    path("incidents/<int:pk>/", incidents.incident_detail, name="incident_detail"),
    path("incidents/<int:pk>/update/", drafts.update_new, name="update_new"),
    path("incidents/<int:pk>/next-update-due/", incidents.incident_next_update_due, name="incident_next_update_due"),
    path("drafts/new/", drafts.draft_new, name="draft_new"),
    path("drafts/<int:pk>/", drafts.draft_detail, name="draft_detail"),
    path("drafts/<int:pk>/review/", reviews.draft_review, name="draft_review"),
    path("drafts/<int:pk>/review/accept-warning/", reviews.draft_accept_warning, name="draft_accept_warning"),
    path("teams/<int:team_pk>/templates/", team_templates.template_list, name="template_list"),
    path("teams/<int:team_pk>/templates/new/", team_templates.template_new, name="template_new"),
    path("teams/<int:team_pk>/templates/<int:pk>/", team_templates.template_edit, name="template_edit"),
    path("teams/<int:team_pk>/templates/<int:pk>/delete/", team_templates.template_delete, name="template_delete"),
    path("drafts/<int:pk>/break-glass/", reviews.draft_break_glass, name="draft_break_glass"),
    path("drafts/<int:pk>/post-review/", reviews.draft_post_review, name="draft_post_review"),
    path("account/", account.account, name="account"),
    path("account/authenticator/", account.mfa_setup, name="mfa_setup"),
    path("audit/", audit.audit_log, name="audit_log"),
    path("audit/export.csv", audit.audit_export_csv, name="audit_export_csv"),
    path("audit/export.jsonl", audit.audit_export_jsonl, name="audit_export_jsonl"),
    path("audit/verify/", audit.audit_verify, name="audit_verify"),
    path("publications/<int:pk>/", publications.publication_status, name="publication_status"),
    path("publications/<int:pk>/retry/", publications.publication_retry, name="publication_retry"),
    path(
        "publications/<int:pk>/edit-and-resubmit/",
        publications.publication_edit_and_resubmit,
        name="publication_edit_and_resubmit",
    ),
    path("publications/<int:pk>/send-again/", publications.publication_send_again, name="publication_send_again"),
    path(
        "publications/<int:pk>/mark-published/",
        publications.publication_mark_published,
        name="publication_mark_published",
    ),
    path("publications/<int:pk>/abandon/", publications.publication_abandon, name="publication_abandon"),
    path(
        "publications/<int:pk>/delete-duplicates/",
        publications.publication_delete_duplicates,
        name="publication_delete_duplicates",
    ),
    path("publications/<int:pk>/acknowledge/", publications.publication_acknowledge, name="publication_acknowledge"),
    path("publications/<int:pk>/cancel/", publications.publication_cancel, name="publication_cancel"),
    # Drafts from alerts (issue 12 §6): the webhook answers to its team's bearer token, never to a session.
    path("hooks/alerts/<int:team_id>/", alerts.alerts_webhook, name="alerts_webhook"),
    path("teams/<int:team_id>/alerts/", alerts.alert_settings, name="alert_settings"),
    path("teams/<int:team_id>/alerts/rotate/", alerts.alert_token_rotate, name="alert_token_rotate"),
    path("teams/<int:team_id>/alerts/mappings/<int:pk>/delete/", alerts.alert_route_delete, name="alert_route_delete"),
]
