"""``{{ event|audit_action }}`` and ``{{ event|audit_changes }}``: one audit event's action and field changes, as
the audit log's rows and the history panels show them.

Filters, not included fragments: the audit log renders them for every one of its 50 rows, and a filter costs a
function call where an ``{% include %}`` costs a template render with its own context (issue 13 P2). Everything
shown is escaped by ``format_html``.
"""

from __future__ import annotations

from django import template
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from ..models import AuditEvent

register = template.Library()


@register.filter
def audit_action(event: AuditEvent) -> SafeString:
    """Its label, then its dotted name (what the filter and exports use); an action older than the registry shows
    its name alone."""
    label = event.action_label
    if label != event.action:
        return format_html("{} <code>{}</code>", label, event.action)
    return format_html("<code>{}</code>", event.action)


@register.filter
def audit_changes(event: AuditEvent) -> SafeString | str:
    """Its field changes, "field: old → new" (nothing when it changed no field)."""
    lines = event.change_lines()
    if not lines:
        return ""
    items = format_html_join("", '<li><span class="audit-field">{}</span>: <del>{}</del> → <ins>{}</ins></li>', lines)
    return format_html('<ul class="audit-changes">\n  {}\n</ul>', items)
