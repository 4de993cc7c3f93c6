"""Reconcile: find registered versions that carry no verdict and queue them.

Webhook delivery is at most once (MLflow retries a few times, then gives up; a receiver that
was down misses the event), so ``ganaudit mlflow serve --reconcile-every SECONDS`` also asks
the registry, at that interval, for every version without a ``ganaudit.verdict`` tag.
"""
from __future__ import annotations

import logging

from ganaudit.registry.client import registry_call
from ganaudit.registry.tags import TAG_VERDICT

log = logging.getLogger(__name__)

PAGE = 200
MAX_PAGES = 1000  # bound on one pass: 200,000 versions


def unaudited_versions(client, models: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``(model, version)`` of every READY version of ``models`` (default: all) with no verdict tag."""
    names = list(models) or [m.name for m in _pages(client.search_registered_models, "list registered models")]
    found = []
    for name in names:
        quoted = name.replace("'", "\\'")
        for mv in _pages(client.search_model_versions, "list model versions", filter_string=f"name = '{quoted}'"):
            if TAG_VERDICT not in (mv.tags or {}) and str(getattr(mv, "status", "READY")) == "READY":
                found.append((mv.name, str(mv.version)))
    return sorted(found, key=lambda item: (item[0], int(item[1])))


def reconcile_once(client, queue, models: tuple[str, ...] = ()) -> int:
    """Queue the versions ``unaudited_versions`` finds; returns how many were newly queued."""
    queued = 0
    for model, version in unaudited_versions(client, models):
        if queue.enqueue(model, version, "reconcile") == "queued":
            log.info("reconcile: queued %s v%s (no verdict tag)", model, version)
            queued += 1
    return queued


def _pages(search, what: str, **kwargs):
    token = None
    for _ in range(MAX_PAGES):
        page = registry_call(what, search, max_results=PAGE, page_token=token, **kwargs)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return
