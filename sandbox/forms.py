"""The control page's fault form: the same choices as ``manage.py sandbox_fault``.

The form only reads the fields as types (a number is a number); what a fault may be (its bounds, which fields
go with which kind) is decided by ``faults.add_fault`` alone, whose refusal comes back as the field's error.
"""

from __future__ import annotations

from typing import Any

from django import forms

from . import faults
from .models import FaultKind, SandboxFault

METHOD_CHOICES = [("", "any method"), *((method, method) for method in faults.METHODS)]


def _bounded(low: float, high: float, **attrs: Any) -> forms.NumberInput:
    # The browser's hint of the bounds add_fault enforces; never the check itself.
    return forms.NumberInput(attrs={"min": low, "max": high, **attrs})


class FaultForm(forms.Form):
    kind = forms.ChoiceField(choices=FaultKind.choices)
    status = forms.IntegerField(
        required=False, widget=_bounded(faults.STATUS_MIN, faults.STATUS_MAX), help_text="status faults: 429, 500…"
    )
    retry_after = forms.IntegerField(
        required=False, widget=_bounded(0, faults.RETRY_AFTER_MAX), label="Retry-After (s)"
    )
    latency_ms = forms.IntegerField(required=False, widget=_bounded(0, faults.LATENCY_MS_MAX), label="Latency (ms)")
    hang_seconds = forms.FloatField(
        required=False,
        widget=_bounded(0.1, faults.HANG_SECONDS_MAX, step="any"),
        label="Hang (s)",
        initial=faults.DEFAULT_HANG_SECONDS,
    )
    count = forms.IntegerField(initial=1, widget=_bounded(1, faults.COUNT_MAX), label="For the next N requests")
    method = forms.ChoiceField(choices=METHOD_CHOICES, required=False)

    def save(self, *, actor: Any) -> SandboxFault | None:
        """Queue the fault (audited as ``actor``) through ``faults.add_fault``; if it refuses, the reason becomes
        this form's error and nothing is queued. Call only on a valid form."""
        data = self.cleaned_data
        try:
            return faults.add_fault(
                kind=data["kind"],
                count=data["count"],
                method=data.get("method") or "",
                status=data.get("status"),
                retry_after=data.get("retry_after"),
                latency_ms=data.get("latency_ms"),
                hang_seconds=data.get("hang_seconds"),
                actor=actor,
            )
        except faults.FaultError as error:
            self.add_error(error.field if error.field in self.fields else None, str(error))
            return None
