"""FD beyond the audit embedder: FID under a published protocol, other feature spaces, FID∞.

The audit's own ``coverage.fd`` is the Fréchet distance in the audit embedder's space with the
house preprocessing. On request this module adds, in ``coverage``:

- ``fd_embedders``: ``{name: {value, n_samples, n_reference, reference, preprocessing, ...}}``,
  one FD per ``--fd-embedders`` entry (any registered embedder; ``inception`` means the FID
  Inception under the chosen ``--fid-protocol``), Stein et al. (2023) recommending FD on
  DINOv2 features beside Inception's;
- ``fid``: the Inception entry in full: protocol (named, and whether it is the default), value,
  sample counts, reference, KID and the Inception Score in the protocol's feature space (the IS
  split order of the protocol), and FID∞ (Chong & Forsyth 2020) with ``--fid-infinity``.

FD is computed when ``fd_embedders`` is set, or any of ``fid_protocol``, ``reference_stats``,
``fid_infinity`` (then for ``inception`` alone). Generated images are embedded as they stream
past copy search (:meth:`FdRun.tap`), never generated twice; reference sets go through the
embedding cache. With ``--reference-stats`` the Inception FD is against the file's statistics
(an image-only ADM batch is embedded under the protocol instead, and then serves every FD);
what needs features the file lacks (KID) says it was not computed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ganaudit.embedders import create_embedder
from ganaudit.embedders.cache import embed_image_set
from ganaudit.embedders.fid_protocols import create_fid_embedder, get_protocol, inception_score_order, protocol_info
from ganaudit.errors import GanauditError
from ganaudit.metrics import fid
from ganaudit.metrics.inception_score import inception_score
from ganaudit.metrics.reference_stats import (
    ReferenceImages, ReferenceStatistics, check_output_path, read_reference, write_statistics,
)

log = logging.getLogger(__name__)

INCEPTION = "inception"
FID_INFINITY_MIN_SAMPLES = 20


def requested_fd_embedders(config) -> tuple[str, ...]:
    """The feature spaces FD is computed in: ``fd_embedders``, else ``inception`` when any FID
    option is set, else none."""
    if config.fd_embedders:
        return tuple(config.fd_embedders)
    wanted = config.fid_protocol is not None or config.reference_stats is not None or config.fid_infinity
    return (INCEPTION,) if wanted else ()


def create_fd_embedder(name: str, device: torch.device, weights=None, protocol=None):
    """``inception`` under ``protocol`` (the FID network), or the registered embedder ``name``."""
    if name == INCEPTION:
        return create_fid_embedder(protocol, device, weights)
    return create_embedder(name, device, weights)


@dataclass
class _Reference:
    """Reference features (or only their statistics) in one feature space."""

    mu: np.ndarray | None
    sigma: np.ndarray | None
    features: np.ndarray | None
    info: dict

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mu is None:
            self.mu, self.sigma = fid.features_to_statistics(self.features)
        return self.mu, self.sigma

    @property
    def n(self) -> int | None:
        return len(self.features) if self.features is not None else self.info.get("n")


class _TappedSource:
    """A batch source that hands each batch to ``on_batch`` before yielding it; else the source."""

    def __init__(self, source, on_batch):
        self._source, self._on_batch = source, on_batch

    def __len__(self) -> int:
        return len(self._source)

    def __getattr__(self, name):
        if name.startswith("_"):  # not set yet (copying, pickling): no recursion through _source
            raise AttributeError(name)
        return getattr(self._source, name)

    def batches(self, batch_size: int):
        for indices, batch in self._source.batches(batch_size):
            self._on_batch(batch)
            yield indices, batch


class FdRun:
    """The FD feature spaces of one audit: their embedders, reference and generated features."""

    def __init__(self, config, device: torch.device, main_embedder):
        self.config = config
        self.protocol = get_protocol(config.fid_protocol)
        self.names = requested_fd_embedders(config)
        self.reference_file = read_reference(config.reference_stats) if config.reference_stats else None
        self.main = main_embedder
        self.embedders = {}
        for name in self.names:
            if name == config.embedder and name != INCEPTION:
                self.embedders[name] = main_embedder  # same features as the audit's: reused, not recomputed
            else:
                weights = config.weights if name == config.embedder else None
                self.embedders[name] = create_fd_embedder(name, device, weights, self.protocol)
        self._generated: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        ref = self.reference_file
        if isinstance(ref, ReferenceStatistics) and INCEPTION in self.embedders:  # checked before any sampling
            dim = self.embedders[INCEPTION].spec.dim
            if ref.mu.shape[0] != dim:
                raise GanauditError(f"--reference-stats {ref.path}: statistics of {ref.mu.shape[0]}-d features, "
                                    f"but {INCEPTION} features are {dim}-d")

    @classmethod
    def create(cls, config, device: torch.device, main_embedder) -> "FdRun | None":
        """An FdRun when the config asks for FD beyond ``coverage.fd``, else None."""
        return cls(config, device, main_embedder) if requested_fd_embedders(config) else None

    def tap(self, source) -> _TappedSource:
        """``source``, whose batches are also embedded in every FD space that needs its own pass."""
        return _TappedSource(source, self._embed_generated)

    def _embed_generated(self, batch: torch.Tensor) -> None:
        for name, embedder in self.embedders.items():
            if embedder is not self.main:
                self._generated[name].append(embedder.embed(batch))

    def section(self, train, train_feats: np.ndarray, gen_feats: np.ndarray, cache_dir, progress=None) -> dict:
        """The result's FD fields: ``{"fid": dict or None, "fd_embedders": {name: dict}}``.

        Args:
            train: the training ImageSet.
            train_feats, gen_feats: the audit embedder's features (reused where a space is it).
            cache_dir: the embedding cache (None: no cache).
        """
        out = {"fid": None, "fd_embedders": {}}
        for name in self.names:
            embedder = self.embedders[name]
            gen = gen_feats if embedder is self.main else _concatenate(self._generated[name], embedder.spec.dim)
            reference = self._reference(name, train, train_feats, cache_dir, progress)
            entry = _fd_entry(name, embedder, self.protocol, reference, gen)
            out["fd_embedders"][name] = entry
            if name == INCEPTION:
                out["fid"] = entry | self._fid_extras(embedder, reference, gen)
        return out

    def _reference(self, name: str, train, train_feats, cache_dir, progress) -> _Reference:
        embedder, ref = self.embedders[name], self.reference_file
        if isinstance(ref, ReferenceStatistics) and name == INCEPTION:
            return _Reference(ref.mu, ref.sigma, ref.features, ref.describe())
        if isinstance(ref, ReferenceImages):
            from ganaudit.sources.datasets import open_image_set

            images = open_image_set(ref.path, "--reference-stats")
            feats = embed_image_set(images, embedder, self.config.batch_size, cache_dir,
                                    f"embedding reference ({name})", progress)
            return _Reference(None, None, feats, ref.describe())
        info = {"kind": "train", "path": str(train.location), "n": len(train)}
        if ref is not None:
            info["note"] = "the --reference-stats file holds Inception statistics; this FD is against --train"
        if embedder is self.main:
            return _Reference(None, None, train_feats, info)
        feats = embed_image_set(train, embedder, self.config.batch_size, cache_dir, f"embedding train ({name})", progress)
        return _Reference(None, None, feats, info)

    def _fid_extras(self, embedder, reference: _Reference, gen: np.ndarray) -> dict:
        config = self.config
        extras = protocol_fields(self.protocol)
        if reference.features is not None:
            extras["kid"] = fid.kernel_distance(reference.features, gen, num_subsets=config.kid_subsets, seed=config.seed)
            extras["kid_note"] = None
        else:
            extras["kid"], extras["kid_note"] = None, "not computed: the reference statistics file holds no features"
        extras.update(_protocol_inception_score(embedder, self.protocol, gen))
        extras["fid_infinity"] = None
        if config.fid_infinity:
            if len(gen) < FID_INFINITY_MIN_SAMPLES:
                extras["fid_infinity_note"] = f"not computed: needs at least {FID_INFINITY_MIN_SAMPLES} samples"
            else:
                real = reference.features if reference.features is not None else reference.statistics()
                extras["fid_infinity"] = fid.fid_infinity(real, gen, seed=config.seed)
        return extras


def protocol_fields(protocol) -> dict:
    """The protocol as the result names it: ``protocol`` (its name), ``protocol_default``,
    ``protocol_details`` (every field of :class:`FidProtocol`)."""
    info = protocol_info(protocol)
    return {"protocol": protocol.name, "protocol_default": info["default"], "protocol_details": info}


def _fd_entry(name: str, embedder, protocol, reference: _Reference, gen: np.ndarray) -> dict:
    if reference.features is not None:
        value = fid.frechet_distance(reference.features, gen)
    else:
        value = fid.statistics_to_frechet_distance(*reference.statistics(), *fid.features_to_statistics(gen))
    preprocessing = f"fid-protocol:{protocol.name}" if name == INCEPTION else "the embedder's own"
    return {"embedder": name, "value": value, "n_samples": int(len(gen)), "n_reference": reference.n,
            "reference": reference.info, "preprocessing": preprocessing,
            "weights_sha256": embedder.weights_sha256()}


def _protocol_inception_score(embedder, protocol, gen: np.ndarray) -> dict:
    logits = embedder.class_logits(gen)
    splits = min(10, len(logits))
    mean, std = inception_score(logits[inception_score_order(protocol, len(logits))], splits=splits)
    return {"inception_score": mean, "inception_score_std": std, "inception_score_splits": splits,
            "inception_score_order": protocol.inception_score_order}


def _concatenate(parts: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty((0, dim), np.float32)


def write_stats(images, output, protocol: str | None = None, embedder: str = INCEPTION, weights=None,
                device: str = "auto", batch_size: int = 128, skip_corrupt: bool = False, progress=None) -> dict:
    """``ganaudit stats``: the FD statistics of an image set, written in pytorch-fid's format.

    Args:
        images: a folder or ``.npz``/``.npy`` of images.
        output: the ``.npz`` to write.
        protocol: the FID protocol (``inception`` only; None: the default).
        embedder: the feature space.

    Returns:
        ``{"path", "n", "dim", "embedder", "protocol"}``.

    Raises:
        GanauditError: bad input (path, protocol, weights, output).
    """
    from ganaudit.device import resolve_device
    from ganaudit.sources.datasets import open_image_set

    check_output_path(output)  # before any work
    if protocol is not None and embedder != INCEPTION:
        raise GanauditError(f"--fid-protocol applies to the inception embedder, not {embedder!r}")
    image_set = open_image_set(images, "stats", skip_corrupt=skip_corrupt)
    network = create_fd_embedder(embedder, resolve_device(device), weights, protocol)
    feats = embed_image_set(image_set, network, batch_size, None, "embedding", progress)
    if len(feats) < 2:
        raise GanauditError(f"stats {images}: needs at least 2 images, found {len(feats)}")
    mu, sigma = fid.features_to_statistics(feats)
    protocol_name = get_protocol(protocol).name if embedder == INCEPTION else None
    path = write_statistics(output, mu, sigma, n=len(feats), protocol=protocol_name, embedder=embedder)
    return {"path": str(path), "n": int(len(feats)), "dim": int(mu.shape[0]), "embedder": embedder,
            "protocol": protocol_name}


def fd_against_reference(config) -> dict:
    """``ganaudit fd``: the FID of a generator (or a folder of samples) against a
    ``--reference-stats`` file alone: no training set, no copy search.

    Generated images are embedded once per FD space as they are drawn; the Inception entry
    is what ``coverage.fid`` of ``check`` would hold against the same file (KID says it was
    not computed when the file holds only statistics).

    Returns:
        ``{"fid": entry, "fd_embedders": {name: entry}, "generator": {...}}``.

    Raises:
        GanauditError: no ``--reference-stats``, or FD spaces the file cannot serve.
    """
    from ganaudit.audit import open_generated
    from ganaudit.device import resolve_device
    from ganaudit.progress import progress_bar

    if config.reference_stats is None:
        raise GanauditError("ganaudit fd needs --reference-stats: a pytorch-fid or clean-fid statistics file, or an "
                            "ADM-style reference batch (with a training set, use ganaudit check --train)")
    device = resolve_device(config.device)
    run = FdRun(config, device, main_embedder=None)
    if isinstance(run.reference_file, ReferenceStatistics) and run.names != (INCEPTION,):
        raise GanauditError(f"--fd-embedders {','.join(run.names)}: {config.reference_stats} holds Inception "
                            "statistics only; ganaudit fd computes FD in other spaces against an ADM-style image "
                            "batch, or use ganaudit check --train")
    source = open_generated(config, device)
    if len(source) < 2:
        raise GanauditError(f"ganaudit fd: needs at least 2 generated images, found {len(source)}")
    with progress_bar(len(source), "sampling + FD features", config.progress) as bar:
        for indices, _ in run.tap(source).batches(config.batch_size):
            bar.update(len(indices))
    section = run.section(None, None, None, None, config.progress)
    generator = {"path": str(config.generator or config.samples), "kind": "generator" if config.generator else "samples",
                 "n_samples": len(source), "seed": config.seed if config.generator else None}
    return section | {"generator": generator}


def summary_lines(coverage: dict) -> list[str]:
    """Lines for the terminal summary: the FID under its protocol, and each other FD."""
    lines = []
    entry = coverage.get("fid")
    if entry:
        default = ", the default" if entry["protocol_default"] else ""
        tail = f"; FID∞ {entry['fid_infinity']['value']:.2f}" if entry.get("fid_infinity") else ""
        lines.append(f"  fid       {entry['value']:.2f} ({entry['protocol']} protocol{default}; {entry['n_samples']} "
                     f"samples vs {entry['n_reference'] or '?'} reference, {entry['reference']['kind']}){tail}")
    for name, row in (coverage.get("fd_embedders") or {}).items():
        if name != INCEPTION:
            lines.append(f"  fd        {name} {row['value']:.4g} ({row['n_samples']} samples vs "
                         f"{row['n_reference'] or '?'} reference, {row['reference']['kind']})")
    return lines
