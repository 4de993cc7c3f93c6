"""The short summary printed at the end of `ganaudit check`: verdict, key figures, outputs."""
from __future__ import annotations

from ganaudit.catalog import summary_figures
from ganaudit.review.hooks import summary_lines


def _threshold_words(mem: dict) -> str:
    cal = mem["calibration"]
    if cal.get("threshold_on", "score") == "score":
        if cal.get("level") == "finest-attainable":
            return (f"calibrated on {cal['n_reference']} {cal['method']} images: alpha {mem['alpha']:g} not attainable, "
                    f"flags at the finest level {cal['alpha_achieved']:.3g} (up to {cal['alpha_achieved']:.1%} of "
                    "non-copies flagged)")
        per_family = f" per family ({', '.join(cal['families'])})" if cal.get("per_family") else ""
        return f"calibrated on {cal['method']}{per_family}, alpha {mem['alpha']:g}"
    sign = ">=" if cal["threshold_on"] == "similarity" else "<="
    return f"{cal['method']} threshold: {cal['threshold_on']} {sign} {mem['threshold']:g}"


def data_lines(mem: dict) -> list[str]:
    """What reference hygiene found in the data (``memorization.hygiene``), when it found anything."""
    h = mem.get("hygiene")
    if not h:
        return []
    ref, dup, low = h["reference"], h["train_duplicates"], h["low_information"]
    items = []
    if ref["n_near_duplicates"]:
        items.append(f"{ref['n_near_duplicates']} of {ref['n_searched']} reference images duplicate training images "
                     "(excluded from calibration)")
    if dup["n_groups"]:
        items.append(f"{dup['n_groups']} duplicate groups in training ({dup['n_images']} images)")
    if low["n_train"] or low["n_reference"] or low["n_generated"]:
        items.append(f"low-information images: {low['n_train']} training, {low['n_reference']} reference, "
                     f"{low['n_generated']} samples ({low['n_flags_withheld']} flags withheld)")
    return [f"  data      {' · '.join(items)}"] if items else []


def _search_words(mem: dict) -> str:
    copy = mem.get("copy_embedder") or {}
    tta = copy.get("tta") or ["none"]
    names = mem["calibration"].get("augmentations") or []
    grid = len(names) - int("refined" in names)  # "refined" is not a variant every image is searched under
    refined = copy.get("refined_fraction")
    also = f"; {refined:.0%} of samples refined" if "refined" in names and refined is not None else ""
    return f"  search    {copy.get('name', '?')}, augmentations {','.join(tta)} ({grid} variants per image{also})"


def _unassigned_words(modes: dict, n_samples: int) -> str:
    """How many samples count towards no mode (results from before issue 16 lack the field)."""
    if "n_unassigned" not in modes:
        return ""
    return f"; {modes['n_unassigned']} of {n_samples} samples unassigned (no confident mode)"


def _figure_lines(result: dict) -> list[str]:
    """One line per result section of the catalog's summary figures."""
    sections: dict[str, list[str]] = {}
    for section, label, value in summary_figures(result):
        sections.setdefault(section, []).append(f"{label} {value}")
    names = {"memorization": "leaks", "coverage": "coverage"}
    return [f"  {names.get(section, section):<9} " + " · ".join(items) for section, items in sections.items()]


def recovery_lines(rec: dict | None) -> list[str]:
    """The latent-recovery line (``--recover``): AUC and interval, flags; or why it was skipped."""
    if rec is None:
        return []
    if rec["status"] != "done":
        return [f"  recovery  skipped: {rec['note']}"]
    low, high = rec["auc_ci95"]
    line = (f"  recovery  AUC {rec['auc']:.3f} (95% CI {low:.2f}–{high:.2f}; 0.5: no leak) over {rec['n_train']} "
            f"training + {rec['n_holdout']} holdout images; {rec['n_flagged']} of {rec['n_train']} training images "
            f"recovered closer than the holdout at alpha {rec['alpha']:g}")
    return [line] + ([f"  recovery  note: {rec['note']}"] if rec.get("note") else [])


def render_summary(result, config) -> str:
    from ganaudit.findings.fd import summary_lines as fd_summary_lines  # imports torch: only when printing

    mem = result.memorization
    modes = result.coverage["modes"]
    subject = result.generator.get("path", "?")
    lines = [
        f"ganaudit: {result.verdict.upper()}  {subject}  "
        f"({mem['n_samples']} samples vs {result.train['n_images']} training images, embedder {result.embedder['name']})",
        *_figure_lines(result.to_dict()),
        f"  flags     {mem['n_flagged']} of {mem['n_samples']} samples, {_threshold_words(mem)}",
        _search_words(mem),
        f"  modes     from {modes['source']}"
        + (f"; missing: {', '.join(map(str, modes['missing'][:6]))}{' …' if len(modes['missing']) > 6 else ''}"
           if modes["missing"] else "; none missing")
        + _unassigned_words(modes, mem["n_samples"]),
    ]
    regions = mem.get("regions")
    if regions:
        tiles = regions["tiles"]
        lines.append(f"  regions   {regions['n_flagged']} of {regions['n_samples']} samples copy a region of a training "
                     f"image ({100 * regions['flagged_fraction']:.1f}%), calibrated on {regions['calibration']['method']}, "
                     f"alpha {regions['alpha']:g}; flat tiles skipped: {tiles['n_train_tiles_skipped_flat']} training, "
                     f"{tiles['n_sample_tiles_skipped_flat']} sample")
    lines += data_lines(mem)  # near-duplicates across the split, training duplicates, blank images
    lines += fd_summary_lines(result.coverage)  # FID under its protocol, FD in other spaces
    lines += recovery_lines(getattr(result, "recovery", None))
    lines += summary_lines(result)  # waivers and stale waivers
    for g in result.gates:
        if g["status"] in ("fail", "warn"):
            lines.append(f"  {g['status'].upper():<5} gate {g['name']}: {g['message']}")
    outputs = [f"{name}: {path}" for name, path in (("report", config.html), ("json", config.json), ("junit", config.junit)) if path]
    if outputs:
        lines.append("  " + " · ".join(outputs))
    lines.append(f"  {result.timings.get('total', 0):.1f} s")
    return "\n".join(lines)
