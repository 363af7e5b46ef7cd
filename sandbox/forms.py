"""The control page's fault form: the same choices as ``manage.py sandbox_fault``."""

from __future__ import annotations

from django import forms

from . import faults
from .models import FaultKind, SandboxFault

METHOD_CHOICES = [("", "any method"), ("GET", "GET"), ("POST", "POST"), ("PATCH", "PATCH"), ("DELETE", "DELETE")]


class FaultForm(forms.Form):
    kind = forms.ChoiceField(choices=FaultKind.choices)
    status = forms.IntegerField(required=False, min_value=400, max_value=599, help_text="status faults: 429, 500…")
    retry_after = forms.IntegerField(required=False, min_value=0, label="Retry-After (s)")
    latency_ms = forms.IntegerField(required=False, min_value=0, max_value=600_000, label="Latency (ms)")
    hang_seconds = forms.FloatField(
        required=False, min_value=0.1, max_value=600, label="Hang (s)", initial=faults.DEFAULT_HANG_SECONDS
    )
    count = forms.IntegerField(min_value=1, max_value=1000, initial=1, label="For the next N requests")
    method = forms.ChoiceField(choices=METHOD_CHOICES, required=False)

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        try:
            # Validate exactly as the command does, without writing: build the fault, then discard it.
            self._fault_args()
        except faults.FaultError as error:
            raise forms.ValidationError(str(error)) from None
        return data

    def _fault_args(self) -> dict:
        data = self.cleaned_data
        kind = data["kind"]
        args = {"kind": kind, "count": data["count"], "method": data.get("method") or ""}
        if kind == FaultKind.STATUS:
            args.update(status=data.get("status"), retry_after=data.get("retry_after"))
            if args["status"] is None:
                raise faults.FaultError("a status fault needs a status between 400 and 599")
        elif kind == FaultKind.LATENCY:
            args["latency_ms"] = data.get("latency_ms")
            if args["latency_ms"] is None:
                raise faults.FaultError("a latency fault needs a latency in ms")
        elif kind == FaultKind.HANG:
            args["hang_seconds"] = data.get("hang_seconds")
        return args

    def save(self) -> SandboxFault:
        return faults.add_fault(**self._fault_args())
