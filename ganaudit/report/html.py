"""The self-contained HTML report: jinja2 templates, autoescaped, no external scripts, no network.

A small inline script (``partials/review.js``) only filters, sorts and copies; with scripts
off every flagged pair and its waiver snippet is still listed.

Templates are looked up first in a user's ``--template-dir``, then in the shipped
``reports/templates`` (inside the wheel at ``ganaudit/templates``).
"""
from __future__ import annotations

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent.parent / "templates"
_SOURCE_TREE = Path(__file__).resolve().parents[2] / "reports" / "templates"


def template_dirs(override: Path | None = None) -> list[Path]:
    """Search path of the templates: the override, then the shipped ones."""
    dirs = [Path(override)] if override is not None else []
    dirs += [d for d in (_PACKAGED, _SOURCE_TREE) if d.is_dir()]
    return dirs


def make_environment(template_dir: Path | None = None):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs(template_dir)]),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v, digits=1: "n/a" if v is None else f"{100 * v:.{digits}f}%"
    env.filters["num"] = lambda v, digits=3: "n/a" if v is None else f"{v:.{digits}f}"
    return env


def render_html(result, images: dict[str, str] | None = None, template_dir: Path | None = None) -> str:
    """Render the report of ``result``; ``images`` maps ``"sample:i"``/``"train:j"`` to data URIs."""
    from ganaudit.catalog import headline_figures
    from ganaudit.report.images import MAX_COPIED, MAX_GALLERY
    from ganaudit.review.report_context import review_context

    env = make_environment(template_dir)
    r = result.to_dict()
    return env.get_template("report.html.j2").render(
        r=r, headline=headline_figures(r), images=images or {}, max_gallery=MAX_GALLERY, max_copied=MAX_COPIED,
        **review_context(r),  # the flagged list with waiver snippets, evidence per leaked image
    )
