from django.urls import path

from .views import dashboard

app_name = "incidents"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
]
