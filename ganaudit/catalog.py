"""The metric catalog: every figure of the result declared once.

Each :class:`Figure` names a value by its dotted path in the JSON result and says which
direction is better, how to label and format it, and what it means. Everything that names
figures reads them from here:

- the gate's known metrics and their direction (``ganaudit.gate.METRICS``): the numeric ones;
- the terminal summary's figures line (``summary=True``);
- the report's headline figures (``headline=True``, in catalog order);
- the descriptions in ``ganaudit/schema/result.schema.json`` (a test holds them together:
  ``schema_with_catalog`` makes the schema the catalog says, and the shipped one must equal it).

Nothing here imports anything heavy.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One figure of the result.

    Attributes:
        path: dotted path in the JSON result (``"coverage.modes.covered_fraction"``).
        higher_is_better: the good direction; None for a figure that is not a score.
        label: a reader's name of it, for the report and the summary.
        unit: what the number is: ``"fraction"``, ``"count"``, ``"distance"``, ``"score"``,
            ``"z-score"``, ``"nats"``, ``"auc"``, ``"images"``.
        description: one sentence of what it means (the JSON Schema's description).
        fmt: how to print it: ``pct``, ``num0`` … ``num4``, ``len`` (length of a list).
        headline: shown among the report's headline figures.
        summary: shown in the terminal summary's figures line.
        gate: a gate or baseline rule may name it (numbers only).
        shown: what the report's card shows as its value: a template (``{path:fmt}``
            placeholders) or a function of the result dict; default the value itself.
        note: the card's label after ``label``: a template or a function; default none.
        optional: leave the card out when the value is null (figures that need a holdout set
            or a particular embedder) instead of showing ``n/a``.
    """

    path: str
    higher_is_better: bool | None
    label: str
    unit: str
    description: str
    fmt: str = "num3"
    headline: bool = False
    summary: bool = False
    gate: bool = True
    shown: str | Callable[[dict], str] | None = None
    note: str | Callable[[dict], str] | None = None
    optional: bool = False


def _support_size(r: dict) -> str:
    size = lookup(r, "coverage.support_size") or {}
    prefix = "≥ " if size.get("lower_bound_only") else ""
    return prefix + format_value(size.get("estimate"), "num0")


FIGURES: tuple[Figure, ...] = (
    Figure("memorization.flagged_fraction", False, "samples flagged as copies", "fraction",
           "Fraction of generated samples flagged as copies of a training image.", "pct", headline=True,
           summary=True, note="({memorization.n_flagged} of {memorization.n_samples}; 95% CI "
                              "{memorization.flagged_fraction_ci95.0:pct}–{memorization.flagged_fraction_ci95.1:pct})"),
    Figure("review.counted.flagged_fraction", False, "flagged and not waived", "fraction",
           "Fraction of samples flagged and not waived by the review file: what the leak gate counts.", "pct",
           headline=True, gate=False, optional=True, note="(what the leak gate counts; {review.n_waived} waived)"),
    Figure("memorization.n_flagged", False, "flagged samples", "count",
           "Number of generated samples flagged as copies.", "num0"),
    Figure("memorization.n_significant", False, "significant flags", "count",
           "Flagged samples that stay discoveries under Benjamini–Hochberg at fdr_q.", "num0"),
    Figure("memorization.regions.flagged_fraction", False, "samples copying a region", "fraction",
           "Fraction of samples whose best tile matches a tile of a training image (a partial copy; --regions).",
           "pct", headline=True, optional=True,
           note="({memorization.regions.n_flagged} of {memorization.regions.n_samples}; region search, "
                "alpha {memorization.regions.alpha})"),
    Figure("memorization.regions.n_flagged", False, "samples copying a region", "count",
           "Number of samples flagged by region search (--regions).", "num0"),
    Figure("memorization.leaked_train_examples", None, "training images copied", "images",
           "Training images that at least one flagged sample copies, most-copied first.", "len",
           headline=True, summary=True, gate=False),
    Figure("coverage.modes.covered_fraction", True, "modes covered", "fraction",
           "Fraction of training modes produced at min_share_ratio of their training share or more, counted "
           "from confidently assigned samples only.", "pct",
           headline=True, summary=True, shown="{coverage.modes.covered}/{coverage.modes.total}",
           note="({coverage.modes.source}; {coverage.modes.n_unassigned} samples unassigned)"),
    Figure("coverage.modes.unassigned_fraction", False, "samples without a confident mode", "fraction",
           "Fraction of samples whose mode the features cannot tell (nearly as near another mode): counted "
           "towards no mode.", "pct", headline=True,
           note="({coverage.modes.n_unassigned} of {memorization.n_samples})"),
    Figure("coverage.modes.kl_divergence", False, "mode KL divergence", "nats",
           "KL(train ‖ generated) between the mode distributions, smoothed.", "num3"),
    Figure("coverage.duplicate_fraction", False, "near-duplicate samples", "fraction",
           "Fraction of samples with another sample closer than the collapse threshold.", "pct",
           headline=True, summary=True),
    Figure("coverage.vendi", True, "Vendi score of samples", "score",
           "Vendi score: the effective number of distinct samples.", "num1", headline=True,
           note="(training set: {coverage.vendi_train:num1})"),
    Figure("coverage.support_size.estimate", True, "support size", "images",
           "Birthday-paradox estimate of how many distinct images the generator makes.", "num0", headline=True,
           shown=_support_size, note="(distinct images the generator can make; birthday test)"),
    Figure("coverage.inception_score", True, "Inception Score", "score",
           "Inception Score of the samples (needs --embedder inception).", "num2", headline=True,
           note="(± {coverage.inception_score_std:num2})", optional=True),
    Figure("coverage.precision", True, "precision", "fraction",
           "Precision (Kynkäänniemi et al. 2019): samples inside the real manifold.", headline=True, summary=True),
    Figure("coverage.recall", True, "recall", "fraction",
           "Recall (Kynkäänniemi et al. 2019): real images inside the generated manifold.", headline=True,
           summary=True),
    Figure("coverage.density", True, "density", "score",
           "Density (Naeem et al. 2020): how many real neighbourhoods contain each sample, on average.",
           headline=True, summary=True),
    Figure("coverage.coverage", True, "coverage", "fraction",
           "Coverage (Naeem et al. 2020): real images with a sample in their neighbourhood.", headline=True,
           summary=True),
    Figure("coverage.fd", False, "Fréchet distance", "distance",
           "Fréchet distance between real and generated features (FID with the inception embedder).", "num2",
           headline=True, note="({embedder.name})"),
    Figure("coverage.kd", False, "kernel distance (KID)", "distance",
           "Kernel (MMD) distance with a cubic polynomial kernel (KID with the inception embedder).", "num4",
           headline=True),
    Figure("memorization.calibration.alpha_achieved", None, "calibrated level", "fraction",
           "The false-flag rate the calibration guarantees: alpha when the reference resolves it, else 1/(n+1), "
           "the finest level n reference images resolve (memorization.calibration.level).", "num4", gate=False),
    Figure("memorization.hygiene.reference.n_near_duplicates", False, "reference images duplicating training images",
           "images", "Holdout (or leave-one-out training) images that are near-duplicates of a training image: "
           "excluded from calibration and listed as pairs.", "num0", gate=False),
    Figure("memorization.hygiene.train_duplicates.n_groups", False, "duplicate groups in the training set", "count",
           "Groups of training images that are near-duplicates of each other (the most extracted, Carlini et al. 2023).",
           "num0", gate=False),
    Figure("memorization.hygiene.low_information.n_flags_withheld", None, "low-information flags withheld", "count",
           "Samples the threshold would flag that are low-information (near-constant) images, so are not counted as leaks.",
           "num0", gate=False),
    Figure("memorization.ct_statistic", True, "C_T data-copying statistic", "z-score",
           "C_T of Meehan et al. 2020: about 0 without copying, strongly negative when samples copy.", "num2",
           headline=True, note="(≪ 0: copying)", optional=True),
    Figure("memorization.authenticity", True, "authenticity", "fraction",
           "Authenticity of Alaa et al. 2022: samples outside every training image's nearest-neighbour ball.",
           headline=True),
    Figure("memorization.mia_auc", False, "membership-inference AUC", "auc",
           "GAN-Leaks membership-inference AUC: 0.5 means no leak.", headline=True, note="(0.5: no leak)",
           optional=True),
    Figure("recovery.auc", False, "latent-recovery AUC", "auc",
           "White-box membership AUC (--recover): how often a training image is reconstructed through the generator "
           "closer than a held-out one, in pixels; 0.5 means no leak.", headline=True, optional=True,
           note="(95% CI {recovery.auc_ci95.0:num2}–{recovery.auc_ci95.1:num2}; 0.5: no leak)"),
    Figure("recovery.auc_descriptor", False, "latent-recovery AUC (copy descriptor)", "auc",
           "The latent-recovery AUC with reconstruction distances measured in the copy descriptor.", optional=True),
    Figure("recovery.flagged_fraction", False, "training images recovered", "fraction",
           "Fraction of recovered training images reconstructed closer than all but alpha of the held-out images.",
           "pct", headline=True, optional=True,
           note="({recovery.n_flagged} of {recovery.n_train} at alpha {recovery.alpha})"),
    Figure("recovery.n_flagged", False, "recovered training images flagged", "count",
           "Number of recovered training images flagged against the held-out images' distances.", "num0",
           optional=True),
)

BY_PATH: dict[str, Figure] = {f.path: f for f in FIGURES}


def gate_metrics() -> dict[str, bool]:
    """Every metric a gate may name, with its direction (True: higher is better)."""
    return {f.path: bool(f.higher_is_better) for f in FIGURES if f.gate and f.higher_is_better is not None}


def lookup(data: dict, dotted: str) -> Any:
    """``data["a"]["b"][0]`` for ``"a.b.0"``; None where a part is missing."""
    node: Any = data
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def format_value(value: Any, fmt: str) -> str:
    """``value`` printed by ``fmt`` (see :class:`Figure`); ``n/a`` for None."""
    if value is None:
        return "n/a"
    if fmt == "len":
        return str(len(value))
    if fmt == "pct":
        return f"{100 * value:.1f}%"
    if fmt.startswith("num"):
        return f"{value:.{int(fmt[3:])}f}"
    if fmt == "text":
        return str(value)
    raise ValueError(f"unknown figure format {fmt!r}")


_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.]+)(?::([a-z0-9]+))?\}")


def render(template: str | Callable[[dict], str] | None, result: dict) -> str:
    """Fill ``{path}`` / ``{path:fmt}`` placeholders from ``result`` (a template), or call it."""
    if template is None:
        return ""
    if callable(template):
        return template(result)
    return _PLACEHOLDER.sub(lambda m: format_value(lookup(result, m[1]), m[2] or "text"), template)


def headline_figures(result: dict) -> list[dict]:
    """The report's headline cards: ``{"path", "value", "label", "note"}`` in catalog order."""
    cards = []
    for f in FIGURES:
        value = lookup(result, f.path)
        if not f.headline or (f.optional and value is None):
            continue
        shown = render(f.shown, result) if f.shown else format_value(value, f.fmt)
        cards.append({"path": f.path, "value": shown, "label": f.label, "note": render(f.note, result)})
    return cards


def summary_figures(result: dict) -> list[tuple[str, str, str]]:
    """``(section, label, value)`` of the terminal summary's figures, in catalog order."""
    return [(f.path.split(".")[0], f.label, render(f.shown, result) if f.shown else format_value(lookup(result, f.path), f.fmt))
            for f in FIGURES if f.summary]


def schema_with_catalog(schema: dict) -> dict:
    """``schema`` with each figure's description set at its path (a copy; the input is unchanged).

    Raises:
        KeyError: a figure whose path the schema does not declare.
    """
    import copy

    out = copy.deepcopy(schema)
    for f in FIGURES:
        node = out
        for part in f.path.split("."):
            node = node["properties"][part]
        node["description"] = f.description
    return out
