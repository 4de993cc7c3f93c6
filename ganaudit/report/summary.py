"""The short summary printed at the end of `ganaudit check`: verdict, key figures, outputs."""
from __future__ import annotations


def _threshold_words(mem: dict) -> str:
    cal = mem["calibration"]
    if cal.get("threshold_on", "score") == "score":
        return f"calibrated on {cal['method']}, alpha {mem['alpha']:g}"
    sign = ">=" if cal["threshold_on"] == "similarity" else "<="
    return f"{cal['method']} threshold: {cal['threshold_on']} {sign} {mem['threshold']:g}"


def render_summary(result, config) -> str:
    from ganaudit.fd_audit import summary_lines as fd_summary_lines

    mem, cov = result.memorization, result.coverage
    modes = cov["modes"]
    subject = result.generator.get("path", "?")
    lines = [
        f"ganaudit: {result.verdict.upper()}  {subject}  "
        f"({mem['n_samples']} samples vs {result.train['n_images']} training images, embedder {result.embedder['name']})",
        f"  leaks     {mem['n_flagged']} of {mem['n_samples']} samples flagged ({mem['flagged_fraction']:.1%}; "
        + _threshold_words(mem) + "), "
        f"{len(mem['leaked_train_examples'])} training images copied",
        f"  modes     {modes['covered']}/{modes['total']} covered ({modes['source']})"
        + (f"; missing: {', '.join(map(str, modes['missing'][:6]))}{' …' if len(modes['missing']) > 6 else ''}"
           if modes["missing"] else ""),
        f"  coverage  precision {cov['precision']:.3f}  recall {cov['recall']:.3f}  "
        f"density {cov['density']:.3f}  coverage {cov['coverage']:.3f}  near-duplicates {cov['duplicate_fraction']:.1%}",
    ]
    lines += fd_summary_lines(cov)
    for g in result.gates:
        if g["status"] in ("fail", "warn"):
            lines.append(f"  {g['status'].upper():<5} gate {g['name']}: {g['message']}")
    outputs = [f"{name}: {path}" for name, path in (("report", config.html), ("json", config.json), ("junit", config.junit)) if path]
    if outputs:
        lines.append("  " + " · ".join(outputs))
    lines.append(f"  {result.timings.get('total', 0):.1f} s")
    return "\n".join(lines)
