"""The whole audit as a sequence of stages: source → embed → search → findings → gate.

Each stage lives in its own package (``sources``, ``embedders``, ``search``, ``metrics`` with
``findings``, ``gate``); this module only runs them in order and times them. Generated
images are never kept: each batch is embedded and searched as soon as it is sampled, and
only its features and best matches stay.
"""
from __future__ import annotations

import sys
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ganaudit import gate, result as provenance
from ganaudit.config import AuditConfig
from ganaudit.config_checks import OUTPUT_RANGES
from ganaudit.device import resolve_device
from ganaudit.embedders import create_copy_embedder, create_embedder
from ganaudit.embedders.cache import default_cache_dir, embed_image_set, usable_cache_dir
from ganaudit.engines import open_engine
from ganaudit.errors import GanauditError
from ganaudit.findings import Evidence
from ganaudit.findings.coverage import coverage_section
from ganaudit.findings.fd import FdRun
from ganaudit.findings.memorization import memorization_section
from ganaudit.findings.per_class import per_class_sections
from ganaudit.findings.recovery import recovery_section
from ganaudit.findings.regions import regions_section
from ganaudit.result import AuditResult
from ganaudit.review import hooks as review
from ganaudit.search.approximate import recall_at_1
from ganaudit.findings.hygiene import hygiene_section
from ganaudit.search import hygiene
from ganaudit.search.calibration import calibrate_reference, decide_flags, threshold_policy
from ganaudit.search.copy_search import CopySearcher
from ganaudit.search import regions
from ganaudit.search.index import build_index, faiss_gpu_id
from ganaudit.sources.datasets import open_image_set
from ganaudit.sources.generators import load_generator
from ganaudit.sources.samples import GeneratorSamples, SampleFiles

RECALL_QUERIES = 500  # generated samples on which an approximate index's recall@1 is measured


@dataclass
class AuditContext:
    """What a report needs beyond the result: where to re-read or re-generate images."""

    source: object
    train: object
    holdout: object | None
    reconstructions: dict = field(default_factory=dict)  # latent recovery: train index -> (3, H, W) image


def audit(config: AuditConfig) -> AuditResult:
    """Run the whole audit as ``ganaudit check`` does and return its result.

    Raises:
        GanauditError: bad usage or bad input (the CLI's exit code 2).
    """
    return audit_with_context(config)[0]


def audit_with_context(config: AuditConfig) -> tuple[AuditResult, AuditContext]:
    """``audit``, also returning the image sources the HTML report draws its pictures from."""
    config.validate()
    with open_engine(config) as engine:  # where embedding, sampling and search run (--engine)
        return _audit(config, engine)


def _audit(config: AuditConfig, engine) -> tuple[AuditResult, AuditContext]:
    baseline = gate.read_baseline(config.baseline) if config.baseline is not None else None
    timings: dict[str, float] = {}
    started = time.perf_counter()
    device = resolve_device(config.device)
    with _stage(timings, "load"):
        train = open_image_set(config.train, "--train", skip_corrupt=config.skip_corrupt)
        holdout = (open_image_set(config.holdout, "--holdout", skip_corrupt=config.skip_corrupt)
                   if config.holdout else None)
        source = open_generated(config, device)
        embedder = create_embedder(config.embedder, device, config.weights)
        copy_embedder = create_copy_embedder(config.copy_embedder, embedder, device, config.copy_weights)
        policy = threshold_policy(copy_embedder.spec, config.copy_threshold)
        fd_run = FdRun.create(config, device, embedder)  # FD beyond coverage.fd, when asked for
    if len(train) < 3:
        raise GanauditError(f"--train {config.train}: needs at least 3 images, found {len(train)}")
    if config.modes is not None and config.modes > len(train):
        raise GanauditError(f"--modes {config.modes}: more modes than the {len(train)} training images; "
                            f"give at most {len(train)}")

    with _stage(timings, "embed_train"):
        cache_dir = None if config.no_cache else usable_cache_dir(Path(config.cache_dir or default_cache_dir()))
        train_feats = engine.embed_image_set(train, embedder, config.batch_size, cache_dir, "embedding train",
                                             config.progress, name=config.embedder, weights=config.weights)
        train_copy_feats = train_feats if copy_embedder is embedder else engine.embed_image_set(
            train, copy_embedder, config.batch_size, cache_dir, f"embedding train ({copy_embedder.spec.name})",
            config.progress, name=copy_embedder_name(config, copy_embedder), weights=config.copy_weights)
    with _stage(timings, "index"):
        index = engine.build_index(train_copy_feats, copy_embedder.spec.metric, config.index, config.approx_above,
                                   config.seed, faiss_gpu_id(device),
                                   Path(cache_dir) / "indexes" if cache_dir else None)
    tta = config.tta if config.tta is not None else copy_embedder.spec.copy_tta
    searcher = CopySearcher(index, copy_embedder, tta, config.copy_k, embedder=embedder, rank_by=policy.rank_by,
                            train_features=train_copy_feats)
    region_run = None
    if config.regions:
        with _stage(timings, "region_index"):
            region_run = _region_index(config, train, copy_embedder, device, cache_dir)
    embedded_before = {id(e): e.images_embedded for e in (embedder, copy_embedder)}
    with _stage(timings, "sample_embed_search"):
        streamed = fd_run.tap(source) if fd_run else source
        # a tapped source (FD spaces, regions) is sampled on the driver whatever the engine
        tapped = regions.RegionTap(streamed, region_run[2]) if region_run else streamed
        generated = engine.search_generated(tapped, searcher, config.batch_size,
                                            "sampling + search" + (" + regions" if region_run else ""),
                                            config.progress, RECALL_QUERIES, config)
    grid_variants = len(generated.matches.names) - int(searcher.refines)  # "refined" is not embedded up front
    passes = _passes_per_sample(embedded_before, (embedder, copy_embedder), len(generated.matches.score),
                                grid_variants, searcher.refined_images)
    # near-duplicates under a published copy threshold too (SSCD's cosine), whatever the policy
    published = copy_embedder.spec.copy_threshold if copy_embedder.spec.metric == "ip" else None
    with _stage(timings, "calibrate"):  # reference hygiene first: duplicates and blanks never calibrate
        reference, searched_reference, reference_counts = calibrate_reference(
            train, holdout, searcher, config.seed, config.calibration_max, config.batch_size, config.progress,
            config.alpha, published)
    with _stage(timings, "hygiene"):  # findings about the data: training duplicates, low-information images
        train_contrast = embed_image_set(train, hygiene.ContrastEmbedder(device), config.batch_size, cache_dir,
                                         "contrast train", config.progress)[:, 0]
        train_low = hygiene.low_information(train_contrast)
        groups = hygiene.train_duplicate_groups(index, train_copy_feats, ~train_low, config.copy_k, published,
                                                seed=config.seed)
        generated_low = hygiene.low_information(generated.contrast)
    recovery, reconstructions = None, {}
    if config.recover is not None:  # white-box membership test: after sampling, so the output range is known
        with _stage(timings, "recovery"):
            recovery, reconstructions = recovery_section(source, train, holdout, copy_embedder, config, device)
    if region_run:
        with _stage(timings, "region_calibrate"):
            region_ref, region_ref_info = regions.reference_regions(
                train, holdout, region_run[2], config.seed, config.calibration_max, config.batch_size, config.progress)
    with _stage(timings, "index_recall"):  # exact search of a sample: only costs for approximate indexes
        index_info = {"kind": index.kind, "device": index.device, "cached": index.cached,
                      "recall_at_1": recall_at_1(index, train_copy_feats, generated.copy_features),
                      "n_recall_queries": len(generated.copy_features)}

    with _stage(timings, "metrics"):
        flags = decide_flags(generated.matches, reference, policy, config.alpha, config.fdr_q, config.copy_k,
                             withheld=generated_low)
        evidence = Evidence(train, source, train_feats, generated, reference, flags)
        memorization = memorization_section(evidence, config)
        memorization["hygiene"] = hygiene_section(train, holdout, searched_reference, reference_counts, groups,
                                                  train_low, generated_low, flags.calibration.get("n_withheld", 0),
                                                  published)
        memorization["index"] = index_info
        review.annotate_memorization(memorization, train, index, train_copy_feats, config)
        memorization["copy_embedder"] = provenance.embedder_info(copy_embedder, device) | {
            "tta": list(tta), "variants": list(generated.matches.names), **passes}
        memorization["regions"] = (regions_section(tapped.matches(), region_ref, region_ref_info, region_run[0],
                                                   region_run[1], source, train, config) if region_run else None)
        logits = embedder.class_logits(generated.features) if hasattr(embedder, "class_logits") else None
        coverage = coverage_section(evidence, config, logits)
        if generated.class_labels is not None:
            memorization["per_class"], coverage["per_class"] = per_class_sections(evidence, config)
    coverage.update(fid=None, fd_embedders={})
    if fd_run is not None:
        with _stage(timings, "fd"):
            coverage.update(fd_run.section(train, train_feats, generated.features, cache_dir, config.progress))
    result = AuditResult(
        verdict="pass", gates=[], memorization=memorization, coverage=coverage,
        embedder=provenance.embedder_info(embedder, device),
        generator=provenance.generator_info(source, config),
        train=provenance.set_info(train), holdout=provenance.set_info(holdout) if holdout else None,
        recovery=recovery,
        config=provenance.config_info(config), timings=timings, versions=provenance.versions(),
    )
    review.gate_with_review(result, config, baseline)
    timings["total"] = round(time.perf_counter() - started, 3)
    return result, AuditContext(source, train, holdout, reconstructions)


def _region_index(config: AuditConfig, train, copy_embedder, device, cache_dir):
    """``(training tiles, their index, the region searcher)`` for ``--regions``."""
    if not regions.tileable(tuple(train.size)):
        raise GanauditError(f"--regions: training images of {train.size[1]}x{train.size[0]} px are too small to cut "
                            f"into tiles (at least {regions.MIN_TILE_PX / regions.TILE_FRACTION:.0f} px a side); "
                            "drop --regions")
    if copy_embedder.spec.region_embedder:  # a descriptor of its own for tiles (pixels-copy: pixels-tile)
        copy_embedder = create_embedder(copy_embedder.spec.region_embedder, device)
    tiles = regions.tile_training_set(train, copy_embedder, config.batch_size, config.region_max_tiles, config.seed,
                                      config.progress)
    if tiles.n_indexed_images < 3:
        raise GanauditError("--regions: fewer than 3 training images have tiles with detail (the rest are flat); "
                            "drop --regions")
    index = build_index(tiles.features, copy_embedder.spec.metric, config.index, config.approx_above, config.seed,
                        gpu=faiss_gpu_id(device), cache_dir=Path(cache_dir) / "indexes" if cache_dir else None)
    tiles.release_features()  # the index holds its own copy
    return tiles, index, regions.RegionSearcher(index, tiles, copy_embedder, config.copy_k)


def _passes_per_sample(before: dict, embedders, n_samples: int, n_variants: int, refined: int = 0) -> dict:
    """What embedding the generated samples cost: images through each embedder per sample, and
    the forward passes of networks (embedders with weights) per sample.

    Counted on this process's embedders; where the samples were embedded elsewhere (Ray
    actors run ``embed_variants``: every variant through the copy embedder, the image once
    through the audit's embedder when it is another one) nothing was counted here, and the
    same passes are those of the variants searched. ``refined`` samples were aligned by the
    ``refine`` step (``search.align``), on this process whatever the engine: each embedded
    once more (its gradient steps are not counted); ``refined_fraction`` is their share."""
    main, copy = embedders
    per = {}
    n = max(n_samples, 1)
    for e in embedders:
        per[e.spec.name] = (e.images_embedded - before[id(e)]) / n
    per[copy.spec.name] -= refined / n
    if n_samples and not any(per.values()):  # embedded on the cluster
        per = {copy.spec.name: float(n_variants)} | ({} if main is copy else {main.spec.name: 1.0})
    per[copy.spec.name] += refined / n
    network = sum(per[e.spec.name] for e in {id(e): e for e in embedders}.values() if e.is_network)
    return {"passes_per_sample": per, "network_passes_per_sample": network, "refined_fraction": refined / n}


def open_generated(config: AuditConfig, device):
    """The generator (or sample set) under audit, as an ``ImageSource``."""
    if config.samples is not None:
        return SampleFiles(open_image_set(config.samples, "--samples", skip_corrupt=config.skip_corrupt))
    value_range = OUTPUT_RANGES[config.output_range] if config.output_range else None
    generator = load_generator(
        config.generator, device, z_dim=config.z_dim, arch=config.arch, arch_kwargs=config.arch_kwargs,
        trust_checkpoint=config.trust_checkpoint, value_range=value_range, num_classes=config.num_classes,
        class_weights=config.class_weights, truncation=config.truncation,
    )
    return GeneratorSamples(generator, config.num_samples, config.seed)


def copy_embedder_name(config: AuditConfig, copy_embedder) -> str:
    """The registry name that builds the copy embedder again (``--copy-embedder``, or what auto chose)."""
    return config.copy_embedder if config.copy_embedder != "auto" else copy_embedder.spec.name


@contextmanager
def _stage(timings: dict, name: str):
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 3)


class _CallableModule(types.ModuleType):
    """``ganaudit.audit(config)`` is the documented API, and ``ganaudit.audit`` is also this
    module's name: once anything imports the module (the CLI does), the package attribute is
    the module, so the module itself answers the call."""

    def __call__(self, config: AuditConfig) -> AuditResult:
        return audit(config)


sys.modules[__name__].__class__ = _CallableModule
