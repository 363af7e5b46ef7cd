from django.urls import path

from .views import dashboard, services

app_name = "incidents"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("services/<int:pk>/", services.service_detail, name="service_detail"),
]
