"""MLflow webhook deliveries: signature and timestamp checked before the body is parsed.

MLflow (3.3+) signs each delivery with the webhook's secret::

    X-MLflow-Delivery-Id: <uuid>
    X-MLflow-Timestamp:   <unix seconds>
    X-MLflow-Signature:   v1,<base64 HMAC-SHA256(secret, "<delivery id>.<timestamp>.<raw body>")>

and the body is ``{"entity": ..., "action": ..., "timestamp": ..., "data": {...}}``. A delivery
is accepted only when the signature matches (``hmac.compare_digest``) and the timestamp is
within the tolerance window of now; the delivery id is then the idempotency key.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
VERSION_CREATED = "model_version.created"
ALIAS_CREATED = "model_version_alias.created"


class SignatureError(Exception):
    """A delivery whose signature is missing, wrong, or whose timestamp is outside the window (401)."""


class PayloadError(Exception):
    """A correctly signed delivery whose body is not an MLflow event (400)."""


@dataclass(frozen=True)
class Delivery:
    """One verified delivery. ``event`` is ``"<entity>.<action>"``, e.g. ``model_version.created``."""

    delivery_id: str
    timestamp: int
    event: str
    data: dict


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for ``body``."""
    message = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify_delivery(secret: str, headers, body: bytes, now: float, tolerance: float) -> Delivery:
    """Check a delivery's signature and timestamp, then parse it.

    Args:
        secret: the webhook's secret.
        headers: a case-insensitive mapping with ``.get`` (``http.server``'s headers).
        body: the raw request body, exactly as received.
        now: the current Unix time; tolerance: seconds the timestamp may be off, either way.

    Raises:
        SignatureError: missing headers, a bad signature, a timestamp outside the window.
        PayloadError: a signed body that is not an MLflow event.
    """
    delivery_id, stamp, signature = (headers.get(h) for h in (DELIVERY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    missing = [h for h, v in ((DELIVERY_HEADER, delivery_id), (TIMESTAMP_HEADER, stamp), (SIGNATURE_HEADER, signature))
               if not v]
    if missing:
        raise SignatureError(f"missing {', '.join(missing)}")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not a Unix time: {stamp[:40]!r}") from None
    expected = sign(secret, delivery_id, stamp, body)
    offered = [s.strip() for s in signature.split(" ")]  # Standard Webhooks allows several, space-separated
    if not any(hmac.compare_digest(s.encode(), expected.encode()) for s in offered):
        raise SignatureError("signature does not match")
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"timestamp {timestamp} is {now - timestamp:+.0f} s from now (window {tolerance:.0f} s)")
    return Delivery(delivery_id, timestamp, *parse_event(body))


def parse_event(body: bytes) -> tuple[str, dict]:
    """``(event name, data)`` of a delivery body."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PayloadError(f"body is not JSON: {e}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise PayloadError("body is not an MLflow webhook event (no 'data' object)")
    return f"{payload.get('entity')}.{payload.get('action')}", payload["data"]


def version_of(delivery: Delivery, own_alias: str) -> tuple[str, str] | None:
    """``(model, version)`` a delivery asks to gate, or None for events that do not.

    ``model_version.created`` gates the new version; ``model_version_alias.created`` gates the
    version an alias now points at, except the gate's own alias (setting it must not loop).
    """
    data = delivery.data
    if delivery.event == VERSION_CREATED or (delivery.event == ALIAS_CREATED and data.get("alias") != own_alias):
        name, version = data.get("name"), data.get("version")
        if isinstance(name, str) and name and str(version).isdigit():
            return name, str(version)
        raise PayloadError(f"{delivery.event} without a model name and version")
    return None
