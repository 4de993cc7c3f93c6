"""ganaudit in front of a model registry: ``ganaudit mlflow gate`` and ``ganaudit mlflow serve``.

MLflow is an optional extra (``pip install 'ganaudit[mlflow]'``), imported only inside the
functions that talk to it; importing this package costs nothing. See docs/registry.md.
"""
from __future__ import annotations

from ganaudit.registry.commands import add_commands

__all__ = ["add_commands"]
