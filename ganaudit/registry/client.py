"""MLflow, imported only when a registry command runs, and the facts ganaudit needs from it.

``import_mlflow`` is the one place that imports the optional dependency; every other module
of this package calls it inside the function that needs MLflow, so ``import ganaudit`` (and
``ganaudit check``) never pays for it and works without it.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from ganaudit.errors import GanauditError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'ganaudit[mlflow]'"
# MLflow's client retries a dead server for about four minutes by default; a gate says so in
# seconds, and the receiver's queue retries with its own backoff. The environment overrides these.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))/?")


class RegistryUnavailable(GanauditError):
    """The registry could not be reached (connection refused, timeout, 5xx): retry later."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""

    name: str
    version: str | None = None
    alias: str | None = None


def import_mlflow():
    """Return the ``mlflow`` module, or raise GanauditError naming the extra to install."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in logs
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # the gate prints its own line
    try:
        import mlflow
    except ImportError:
        raise GanauditError(f"the MLflow commands need MLflow: {INSTALL_HINT}") from None
    return mlflow


def make_client(tracking_uri: str | None = None):
    """An ``MlflowClient`` for ``tracking_uri`` (default: ``MLFLOW_TRACKING_URI``)."""
    mlflow = import_mlflow()
    for name, value in CLIENT_ENV.items():
        os.environ.setdefault(name, value)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise GanauditError("no MLflow registry given: pass --tracking-uri URL or set MLFLOW_TRACKING_URI")
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def parse_model_uri(uri: str) -> ModelRef:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` as a ModelRef."""
    match = _URI.fullmatch(uri.strip())
    if match is None:
        raise GanauditError(f"{uri!r} is not a model version URI: use models:/NAME/VERSION or models:/NAME@ALIAS")
    return ModelRef(match["name"], match["version"], match["alias"])


def is_unavailable(error: BaseException) -> bool:
    """True when ``error`` (or its cause) says the server could not be reached or is failing."""
    seen = 0
    node: BaseException | None = error
    while node is not None and seen < 20:
        name = f"{type(node).__module__}.{type(node).__name__}"
        if isinstance(node, (ConnectionError, TimeoutError)) or name.startswith(("requests.exceptions.", "urllib3.")):
            return True
        status = getattr(node, "get_http_status_code", None)
        code = getattr(node, "error_code", "")
        if code in ("TEMPORARILY_UNAVAILABLE", "SERVICE_UNDER_MAINTENANCE", "REQUEST_LIMIT_EXCEEDED"):
            return True
        if callable(status) and type(node).__name__ == "RestException" and status() >= 500:
            return True
        node, seen = node.__cause__ or node.__context__, seen + 1
    return False


def registry_call(what: str, fn, *args, **kwargs):
    """Call the MLflow client; an unreachable registry becomes RegistryUnavailable."""
    try:
        return fn(*args, **kwargs)
    except GanauditError:
        raise
    except Exception as e:
        if is_unavailable(e):
            raise RegistryUnavailable(f"MLflow registry unreachable while trying to {what}: {_first_line(e)}") from e
        raise


def not_found(error: BaseException) -> bool:
    """True for MLflow's 'no such model, version or alias' answers."""
    return getattr(error, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def resolve_version(client, ref: ModelRef):
    """The ModelVersion ``ref`` names; GanauditError when the model, version or alias does not exist."""
    try:
        if ref.alias is not None:
            return registry_call("resolve an alias", client.get_model_version_by_alias, ref.name, ref.alias)
        return registry_call("read a model version", client.get_model_version, ref.name, ref.version)
    except GanauditError:
        raise
    except Exception as e:
        if not_found(e):
            what = f"alias {ref.alias!r}" if ref.alias else f"version {ref.version}"
            raise GanauditError(f"registered model {ref.name!r} has no {what} ({_first_line(e)})") from None
        raise


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]
