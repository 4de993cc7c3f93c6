"""ganaudit: audit a trained image generator before release.

Heavy modules (torch, faiss) are imported lazily, so ``import ganaudit`` is cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["audit", "AuditConfig", "AuditResult", "__version__"]


def __getattr__(name: str):
    if name == "audit":
        from ganaudit.audit import audit

        return audit
    if name == "AuditConfig":
        from ganaudit.config import AuditConfig

        return AuditConfig
    if name == "AuditResult":
        from ganaudit.result import AuditResult

        return AuditResult
    raise AttributeError(f"module 'ganaudit' has no attribute {name!r}")
