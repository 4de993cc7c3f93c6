"""Reference statistics files: FD against published statistics instead of a training set.

Read (``--reference-stats PATH``), all ``.npz`` files opened with ``allow_pickle=False``:

- pytorch-fid statistics (``fid_score --save-stats``): ``mu`` ``(D,)`` and ``sigma``
  ``(D, D)``. clean-fid's statistics files (``<name>_<mode>_<split>_<res>.npz``, written by
  ``make_custom_stats`` or downloaded by ``get_reference_statistics``) have the same two keys;
  their file name says the clean-fid mode they were computed in, kept as ``protocol_hint``.
- clean-fid's KID reference files (``..._kid.npz``): ``feats`` ``(N, D)``, the features
  themselves; statistics are computed from them, and KID can use them.
- ADM reference batches (guided-diffusion's evaluation ``.npz``): ``mu``/``sigma`` are used
  when present (its spatial ``mu_s``/``sigma_s`` are not FID's); a batch with only images
  (``arr_0``, ``(N, H, W, 3)`` uint8) is returned as :class:`ReferenceImages`, to be embedded
  under the chosen protocol.

Written (``ganaudit stats``): pytorch-fid's format, ``mu`` float64 ``(D,)`` and ``sigma`` float64
``(D, D)`` (what ``np.mean`` and ``np.cov`` give), which pytorch-fid, clean-fid
(``frechet_distance`` on the two arrays) and torch-fidelity (``fid_statistics_to_metric``) read;
``n`` (images), ``protocol`` and ``embedder`` ride along as extra keys those tools ignore.
"""
from __future__ import annotations

import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganaudit.errors import GanauditError

CLEAN_FID_MODES = {"legacy_tensorflow": "torch-fidelity", "legacy_pytorch": "clean-fid-legacy", "clean": "clean-fid"}
_CLEAN_FID_NAME = re.compile(r"_(legacy_tensorflow|legacy_pytorch|clean)_")


@dataclass(frozen=True)
class ReferenceStatistics:
    """A Gaussian fitted to reference features.

    Attributes:
        mu: ``(D,)`` float64 mean.
        sigma: ``(D, D)`` float64 covariance.
        n: number of images behind them, where the file says.
        path: the file.
        format: ``mu-sigma`` (pytorch-fid, clean-fid, ganaudit), ``adm-mu-sigma`` or
            ``clean-fid-features``.
        protocol_hint: the ganaudit protocol whose tool made the file, where its name says
            (clean-fid files), else None.
        features: ``(N, D)`` float32 features when the file holds them, else None.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None
    path: Path
    format: str
    protocol_hint: str | None = None
    features: np.ndarray | None = None

    def describe(self) -> dict:
        return {"kind": "statistics", "path": str(self.path), "format": self.format, "n": self.n,
                "dim": int(self.mu.shape[0]), "protocol_hint": self.protocol_hint,
                "has_features": self.features is not None}


@dataclass(frozen=True)
class ReferenceImages:
    """A reference batch that holds images only (ADM ``arr_0``): embed them to get statistics."""

    path: Path
    n: int
    format: str = "adm-images"

    def describe(self) -> dict:
        return {"kind": "images", "path": str(self.path), "format": self.format, "n": self.n}


def protocol_hint(path: Path | str) -> str | None:
    """The ganaudit protocol of a clean-fid statistics file, from the mode in its name."""
    match = _CLEAN_FID_NAME.search(Path(path).name.lower())
    return CLEAN_FID_MODES[match.group(1)] if match else None


def read_reference(path: Path | str, what: str = "--reference-stats") -> ReferenceStatistics | ReferenceImages:
    """Read a statistics file (see the module docstring for the formats).

    Raises:
        GanauditError: missing or unreadable file, no known keys, malformed arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise GanauditError(f"{what} {path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):
            raise GanauditError(f"{what} {path}: a bare .npy array, not a statistics .npz (keys mu, sigma)")
        with data:
            return _from_npz(data, path, what)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise GanauditError(f"{what} {path}: not a readable .npz statistics file ({e})") from None


def _from_npz(data, path: Path, what: str) -> ReferenceStatistics | ReferenceImages:
    keys = set(data.files)
    if {"mu", "sigma"} <= keys:
        mu, sigma = _checked_statistics(data["mu"], data["sigma"], path, what)
        n = int(data["n"]) if "n" in keys and data["n"].shape == () else None
        kind = "adm-mu-sigma" if "arr_0" in keys else "mu-sigma"
        return ReferenceStatistics(mu, sigma, n, path, kind, protocol_hint(path))
    if "feats" in keys:
        from ganaudit.metrics.fid import features_to_statistics

        feats = np.asarray(data["feats"], dtype=np.float32)
        if feats.ndim != 2 or feats.shape[0] < 2 or not np.isfinite(feats).all():
            raise GanauditError(f"{what} {path}: 'feats' must be a finite (N >= 2, D) array, got shape {feats.shape}")
        mu, sigma = features_to_statistics(feats)
        return ReferenceStatistics(mu, sigma, len(feats), path, "clean-fid-features", protocol_hint(path), feats)
    if "arr_0" in keys:
        shape = _member_shape(path)
        if len(shape) != 4 or shape[-1] != 3:
            raise GanauditError(f"{what} {path}: 'arr_0' must hold (N, H, W, 3) images, got shape {shape}")
        return ReferenceImages(path, int(shape[0]))
    raise GanauditError(f"{what} {path}: no statistics; expected keys mu and sigma (pytorch-fid, clean-fid, ADM), "
                        f"feats (clean-fid KID) or arr_0 (ADM images), found {', '.join(sorted(keys)) or 'none'}")


def _member_shape(path: Path) -> tuple[int, ...]:
    from ganaudit.sources.arrays import ArrayFile  # reads the header only, not the images

    return tuple(ArrayFile(path, "arr_0.npy").shape)


def _checked_statistics(mu, sigma, path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu), np.asarray(sigma)
    if mu.dtype.kind not in "fiu" or sigma.dtype.kind not in "fiu":
        raise GanauditError(f"{what} {path}: mu and sigma must be numbers, got {mu.dtype} and {sigma.dtype}")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise GanauditError(f"{what} {path}: mu must be (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise GanauditError(f"{what} {path}: mu or sigma holds NaN or infinite values")
    return mu, sigma


def check_output_path(path: Path | str) -> Path:
    """``path`` as a Path; GanauditError unless it ends in ``.npz`` (pytorch-fid needs the suffix)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise GanauditError(f"-o {path}: statistics files must end in .npz (pytorch-fid recognises them by it)")
    return path


def write_statistics(path: Path | str, mu: np.ndarray, sigma: np.ndarray, n: int | None = None,
                     protocol: str | None = None, embedder: str | None = None) -> Path:
    """Write pytorch-fid-format statistics atomically (a temporary file, then ``os.replace``).

    Args:
        path: the ``.npz`` to write (pytorch-fid recognises statistics by that suffix).
        mu: ``(D,)`` mean; stored as float64.
        sigma: ``(D, D)`` covariance; stored as float64.
        n, protocol, embedder: extra keys (the number of images, how they were embedded).

    Raises:
        GanauditError: the path does not end in ``.npz``, or cannot be written.
    """
    path = check_output_path(path)
    extra = {k: np.array(v) for k, v in (("n", n), ("protocol", protocol), ("embedder", embedder)) if v is not None}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), **extra)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise GanauditError(f"-o {path}: cannot write it ({e.strerror or e})") from None
    return path
