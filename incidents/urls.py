from django.urls import path

from .views import account, audit, dashboard, drafts, incidents, publications, reviews, services

app_name = "incidents"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("services/<int:pk>/", services.service_detail, name="service_detail"),
    path("incidents/", incidents.incident_list, name="incident_list"),
    path("incidents/<int:pk>/", incidents.incident_detail, name="incident_detail"),
    path("incidents/<int:pk>/update/", drafts.update_new, name="update_new"),
    path("drafts/new/", drafts.draft_new, name="draft_new"),
    path("drafts/<int:pk>/", drafts.draft_detail, name="draft_detail"),
    path("drafts/<int:pk>/review/", reviews.draft_review, name="draft_review"),
    path("account/", account.account, name="account"),
    path("audit/", audit.audit_log, name="audit_log"),
    path("audit/export.csv", audit.audit_export_csv, name="audit_export_csv"),
    path("audit/export.jsonl", audit.audit_export_jsonl, name="audit_export_jsonl"),
    path("audit/verify/", audit.audit_verify, name="audit_verify"),
    path("audit/verify/<int:pk>/", audit.audit_verification, name="audit_verification"),
    path("audit/exports/", audit.audit_exports, name="audit_exports"),
    path("audit/exports/<int:pk>/download", audit.audit_export_download, name="audit_export_download"),
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
]
