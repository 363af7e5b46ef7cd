"""``{{ text|status_text }}``: a description as the status page shows it (settings.ISDOWN_MARKDOWN).

Plain text (the default: IsDown does not document that its pages render Markdown): escaped, blank lines make
paragraphs and single line breaks are kept.
Markdown: rendered by Python-Markdown, then cleaned by nh3 (Ammonia) to a small allow-list, so what responders
type can never put script, styles or event handlers into our pages (the CSP would block them anyway).
"""

from __future__ import annotations

import markdown as markdown_lib
import nh3
from django import template
from django.conf import settings
from django.template.defaultfilters import linebreaks_filter
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

ALLOWED_TAGS = {"p", "br", "strong", "em", "code", "pre", "ul", "ol", "li", "blockquote", "a", "h3", "h4", "hr"}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}}


def render(text: str, *, as_markdown: bool) -> SafeString:
    if not as_markdown:
        return linebreaks_filter(text, autoescape=True)
    html = markdown_lib.markdown(text, extensions=["nl2br"], output_format="html")
    cleaned = nh3.clean(html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes={"http", "https", "mailto"})
    return mark_safe(cleaned)  # noqa: S308 - sanitised by nh3 to the allow-list above


@register.filter
def status_text(text: str | None) -> SafeString:
    return render(text or "", as_markdown=settings.ISDOWN_MARKDOWN)
