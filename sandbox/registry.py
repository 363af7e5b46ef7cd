"""Which services the sandbox accepts writes for. seed_demo registers the demo services here."""

from __future__ import annotations

from django.utils.text import slugify

from .models import SandboxService


def register_service(service_id: int, name: str) -> SandboxService:
    """Make the sandbox know ``service_id`` under ``name``. Idempotent: a second call with the same
    arguments writes nothing; a new name renames the service (and its urlname) and nothing else."""
    urlname = slugify(name) or f"service-{service_id}"
    service, created = SandboxService.objects.get_or_create(
        service_id=service_id, defaults={"name": name, "urlname": urlname}
    )
    if not created and (service.name, service.urlname) != (name, urlname):
        service.name, service.urlname = name, urlname
        service.save(update_fields=["name", "urlname"])
    return service
