from django.urls import path

from .views import audit, dashboard, services

app_name = "incidents"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("services/<int:pk>/", services.service_detail, name="service_detail"),
    path("audit/", audit.audit_log, name="audit_log"),
    path("audit/export.csv", audit.audit_export_csv, name="audit_export_csv"),
    path("audit/export.jsonl", audit.audit_export_jsonl, name="audit_export_jsonl"),
    path("audit/verify/", audit.audit_verify, name="audit_verify"),
]
