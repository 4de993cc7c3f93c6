"""The whole audit: config → sample → embed → index → metrics → gate → AuditResult.

This module only orchestrates; the mathematics lives in ``ganaudit.metrics`` and the I/O in
``ganaudit.sources``. Generated images are never kept: each batch is embedded and searched
as soon as it is sampled, and only its features and best matches stay.
"""
from __future__ import annotations

import logging
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import ganaudit
from ganaudit import gate as gating
from ganaudit.config import OUTPUT_RANGES, AuditConfig
from ganaudit.copysearch import CopySearcher, Matches
from ganaudit.embedders import create_embedder
from ganaudit.embedders.cache import default_cache_dir, embed_image_set
from ganaudit.errors import GanauditError
from ganaudit.fd_audit import FdRun
from ganaudit.index import build_index, faiss_gpu_id, recall_at_1
from ganaudit.progress import progress_bar
from ganaudit.result import AuditResult, dig
from ganaudit.sources.datasets import open_image_set
from ganaudit.sources.generated import GeneratorSource, SampleSetSource
from ganaudit.sources.generators import load_generator
from ganaudit import summary_metrics

log = logging.getLogger(__name__)

RECALL_QUERIES = 500  # generated samples on which an approximate index's recall@1 is measured


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be present."""
    cuda, mps = torch.cuda.is_available(), getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps_ok else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps_ok):
        raise GanauditError(f"--device {name} was asked for but is not available here; use --device auto or cpu")
    return torch.device(name)


@contextmanager
def _stage(timings: dict, name: str):
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 3)


def open_generated(config: AuditConfig, device: torch.device):
    """The generator (or sample set) under audit, as a source of image batches."""
    if config.samples is not None:
        return SampleSetSource(open_image_set(config.samples, "--samples", skip_corrupt=config.skip_corrupt))
    value_range = OUTPUT_RANGES[config.output_range] if config.output_range else None
    generator = load_generator(
        config.generator, device, z_dim=config.z_dim, arch=config.arch, arch_kwargs=config.arch_kwargs,
        trust_checkpoint=config.trust_checkpoint, value_range=value_range, num_classes=config.num_classes,
        class_weights=config.class_weights, truncation=config.truncation,
    )
    return GeneratorSource(generator, config.num_samples, config.seed)


@dataclass
class AuditContext:
    """What a report needs beyond the result: where to re-read or re-generate images."""

    source: object
    train: object
    holdout: object | None


def audit(config: AuditConfig) -> AuditResult:
    """Run the whole audit as ``ganaudit check`` does and return its result.

    Raises:
        GanauditError: bad usage or bad input (the CLI's exit code 2).
    """
    return audit_with_context(config)[0]


def audit_with_context(config: AuditConfig) -> tuple[AuditResult, AuditContext]:
    """``audit``, also returning the image sources the HTML report draws its pictures from."""
    config.validate()
    baseline = read_baseline(config.baseline) if config.baseline is not None else None
    timings: dict[str, float] = {}
    started = time.perf_counter()
    device = resolve_device(config.device)
    with _stage(timings, "load"):
        train = open_image_set(config.train, "--train", skip_corrupt=config.skip_corrupt)
        holdout = (open_image_set(config.holdout, "--holdout", skip_corrupt=config.skip_corrupt)
                   if config.holdout else None)
        source = open_generated(config, device)
        embedder = create_embedder(config.embedder, device, config.weights)
        copy_embedder = create_copy_embedder(config, embedder, device)
        fd_run = FdRun.create(config, device, embedder)  # FD beyond coverage.fd, when asked for
    if len(train) < 3:
        raise GanauditError(f"--train {config.train}: needs at least 3 images, found {len(train)}")

    with _stage(timings, "embed_train"):
        cache_dir = None if config.no_cache else (config.cache_dir or default_cache_dir())
        train_feats = embed_image_set(train, embedder, config.batch_size, cache_dir, "embedding train", config.progress)
        train_copy_feats = train_feats if copy_embedder is embedder else embed_image_set(
            train, copy_embedder, config.batch_size, cache_dir, f"embedding train ({copy_embedder.spec.name})",
            config.progress)
    with _stage(timings, "index"):
        index = build_index(train_copy_feats, copy_embedder.spec.metric, config.index, config.approx_above,
                            config.seed, gpu=faiss_gpu_id(device),
                            cache_dir=Path(cache_dir) / "indexes" if cache_dir else None)
    tta = config.tta if config.tta is not None else copy_embedder.spec.copy_tta
    searcher = CopySearcher(index, copy_embedder, tta, config.copy_k, embedder=embedder,
                            rank_by=summary_metrics.rank_key(copy_embedder.spec, config))
    with _stage(timings, "sample_embed_search"):
        gen_feats, gen_copy_feats, gen_matches, gen_classes = search_all(
            fd_run.tap(source) if fd_run else source, searcher, config, "sampling + search",
            keep_copy_features=RECALL_QUERIES)
    with _stage(timings, "calibrate"):
        holdout_feats, reference, calibration = calibrate(train, holdout, searcher, config)
    with _stage(timings, "index_recall"):  # exact search of a sample: only costs for approximate indexes
        index_info = {"kind": index.kind, "device": index.device, "cached": index.cached,
                      "recall_at_1": recall_at_1(index, train_copy_feats, gen_copy_feats),
                      "n_recall_queries": len(gen_copy_feats)}

    with _stage(timings, "metrics"):
        memorization, flagged = summary_metrics.memorization_summary(
            gen_matches, reference, calibration, source, train, config,
            train_feats, holdout_feats, gen_feats, copy_embedder.spec,
        )
        memorization["index"] = index_info
        memorization["copy_embedder"] = _embedder_info(copy_embedder, device) | {"tta": list(tta)}
        logits = embedder.class_logits(gen_feats) if hasattr(embedder, "class_logits") else None
        coverage = summary_metrics.coverage_summary(train, train_feats, gen_feats, gen_matches, config, logits)
        if gen_classes is not None:
            memorization["per_class"], coverage["per_class"] = summary_metrics.per_class_summary(
                gen_classes, gen_matches, flagged, train, train_feats, gen_feats, config)
    coverage.update(fid=None, fd_embedders={})
    if fd_run is not None:
        with _stage(timings, "fd"):
            coverage.update(fd_run.section(train, train_feats, gen_feats, cache_dir, config.progress))
    result = AuditResult(
        verdict="pass", gates=[], memorization=memorization, coverage=coverage,
        embedder=_embedder_info(embedder, device),
        generator=_generator_info(source, config),
        train=_set_info(train), holdout=_set_info(holdout) if holdout else None,
        config=_config_info(config), timings=timings, versions=versions(),
    )
    apply_gates(result, config, baseline)
    timings["total"] = round(time.perf_counter() - started, 3)
    return result, AuditContext(source, train, holdout)


def create_copy_embedder(config: AuditConfig, embedder, device: torch.device):
    """The embedder copy search uses: ``--copy-embedder``, or with ``auto`` the embedder's
    declared copy descriptor (``spec.copy_embedder``), else the embedder itself."""
    name = config.copy_embedder
    if name == "auto":
        name = embedder.spec.copy_embedder or config.embedder
    if name == config.embedder and config.copy_weights is None:
        return embedder
    return create_embedder(name, device, config.copy_weights)


def _embedder_info(embedder, device: torch.device) -> dict:
    return asdict(embedder.spec) | {"device": str(device), "weights_sha256": embedder.weights_sha256(),
                                    "weights_path": str(embedder.weights_path) if embedder.weights_path else None}


def apply_gates(result: AuditResult, config: AuditConfig, baseline: AuditResult | None) -> None:
    """Evaluate the policy's gates (and the baseline rules) on ``result`` and set its verdict."""
    gates = gating.gates_from_config(config.gates) if config.gates else gating.DEFAULT_GATES
    snapshot = result.to_dict()
    result.gates = gating.evaluate(gates, lambda metric: dig(snapshot, metric))
    if baseline is not None:
        result.gates += compare_with_baseline(result, snapshot, baseline, config)
    result.verdict = gating.verdict(result.gates, config.warn_only)


def read_baseline(path) -> AuditResult:
    """A previous audit's JSON result, checked to be one."""
    try:
        return AuditResult.read_json(path)
    except (OSError, ValueError, TypeError) as e:
        raise GanauditError(f"--baseline {path}: not a readable ganaudit JSON result ({e})") from None


def compare_with_baseline(result: AuditResult, snapshot: dict, baseline: AuditResult,
                          config: AuditConfig) -> list[dict]:
    """Gate rows for regressions against ``baseline``; the result records what it was compared with."""
    if baseline.embedder.get("name") != result.embedder["name"]:
        raise GanauditError(
            f"--baseline was audited with embedder {baseline.embedder.get('name')!r}, this run with "
            f"{result.embedder['name']!r}: figures from different feature spaces cannot be compared"
        )
    rules = gating.baseline_rules_from_config(config.baseline_rules) if config.baseline_rules else gating.DEFAULT_BASELINE_RULES
    result.baseline = {"path": str(config.baseline), "verdict": baseline.verdict,
                       "generator": baseline.generator.get("path"), "generator_sha256": baseline.generator.get("sha256")}
    baseline_snapshot = baseline.to_dict()
    return gating.evaluate_baseline(rules, lambda m: dig(snapshot, m), lambda m: dig(baseline_snapshot, m))


def search_all(source, searcher: CopySearcher, config: AuditConfig, label: str, exclude_of=None,
               keep_copy_features: int = 0):
    """Embed and search every batch of ``source``.

    Args:
        keep_copy_features: also return the copy features of the first this many images.

    Returns:
        ``(features (N, D), copy features (at most keep_copy_features, D'), Matches, class
        labels (N,) or None)``; labels come from conditional generators and labelled sample
        folders.
    """
    feats, copy_feats, parts, labels = [], [], [], []
    kept = 0
    class_labels = getattr(source, "class_labels", lambda _indices: None)
    with progress_bar(len(source), label, config.progress) as bar:
        for indices, batch in source.batches(config.batch_size):
            exclude = None if exclude_of is None else exclude_of[indices]
            f, c, m = searcher(batch, exclude=exclude)
            feats.append(f)
            if kept < keep_copy_features:
                copy_feats.append(c[: keep_copy_features - kept])
                kept += len(copy_feats[-1])
            parts.append(m)
            labels.append(class_labels(indices))
            bar.update(len(indices))
    has_labels = all(lab is not None for lab in labels)
    copy = np.concatenate(copy_feats) if copy_feats else np.empty((0, searcher.copy_embedder.spec.dim), np.float32)
    return (np.concatenate(feats), copy, Matches.concatenate(parts),
            np.concatenate(labels) if has_labels else None)


class _Subset:
    """Some images of an ImageSet, in a given order, as a batch source."""

    def __init__(self, images, indices: np.ndarray):
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, batch_size: int):
        position = {int(j): p for p, j in enumerate(self.indices)}
        for chunk, batch in self.images.batches(batch_size, self.indices):
            yield np.array([position[int(j)] for j in chunk]), batch


def calibrate(train, holdout, searcher: CopySearcher, config: AuditConfig):
    """Reference scores of images known not to be copies.

    With a holdout set: holdout→train scores. Without: leave-one-out train→train scores on
    a seeded subset of at most ``calibration_max`` training images.

    Returns:
        ``(holdout features or None, reference Matches, calibration info dict)``.
    """
    if holdout is not None:
        feats, _, matches, _ = search_all(holdout, searcher, config, "calibrating on holdout")
        return feats, matches, {"method": "holdout", "n_reference": len(matches.score)}
    rng = np.random.default_rng(config.seed)
    n = min(len(train), config.calibration_max)
    chosen = np.sort(rng.choice(len(train), size=n, replace=False))
    _, _, matches, _ = search_all(_Subset(train, chosen), searcher, config, "calibrating on train",
                               exclude_of=chosen)
    return None, matches, {"method": "train-leave-one-out", "n_reference": n}


def _generator_info(source, config: AuditConfig) -> dict:
    if isinstance(source, SampleSetSource):
        return {"kind": "samples", "path": str(config.samples), "n_samples": len(source),
                "fingerprint": source.images.fingerprint(), "n_corrupt": source.images.n_corrupt}
    return {"kind": "generator", **source.generator.info, "n_samples": len(source), "seed": config.seed}


def _set_info(images) -> dict:
    return {"path": str(images.location), "n_images": len(images), "size": list(images.size),
            "n_classes": len(images.class_names), "class_names": images.class_names,
            "fingerprint": images.fingerprint(), "n_corrupt": images.n_corrupt}


def _config_info(config: AuditConfig) -> dict:
    return {k: (str(v) if hasattr(v, "__fspath__") else v) for k, v in asdict(config).items()}


def versions() -> dict:
    from importlib.metadata import version  # not `import sklearn`: 1.3 s of imports for a version string

    import faiss

    return {"ganaudit": ganaudit.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "faiss": faiss.__version__, "numpy": np.__version__, "sklearn": version("scikit-learn"),
            "platform": platform.platform()}
