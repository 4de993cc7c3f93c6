"""Renderers that read an AuditResult: HTML (jinja2), JUnit XML, the terminal summary."""
from __future__ import annotations

from pathlib import Path

from ganaudit.plumbing import write_atomic
from ganaudit.review.hooks import model_card_output


def write_outputs(result, context, config) -> list[Path]:
    """Render every requested output first, then write them all (nothing half-written)."""
    rendered: list[tuple[Path, str]] = []
    if config.json is not None:
        rendered.append((config.json, result.to_json()))
    if config.html is not None:
        from ganaudit.report.html import render_html
        from ganaudit.report.images import collect_images

        rendered.append((config.html, render_html(result, collect_images(result, context))))
    if config.junit is not None:
        from ganaudit.report.junit import render_junit

        rendered.append((config.junit, render_junit(result)))
    rendered += filter(None, [model_card_output(result, config)])  # --model-card
    for path, text in rendered:
        write_atomic(Path(path), text)
    return [p for p, _ in rendered]
