"""The :class:`ReaderStudy` record and its written forms (JSON, Markdown, per-image CSV).

Private part of :mod:`skin_core.analysis.readers` (which re-exports :class:`ReaderStudy`,
:func:`render_markdown` and :func:`write_reader_report`; import them from there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from skin_core.analysis.records import TestResult


@dataclass(frozen=True)
class ReaderStudy:
    """Result of :func:`~skin_core.analysis.readers.analyze_readers`.

    Attributes
    ----------
    summary:
        JSON-ready dict: ``classes``, ``options``, ``inputs`` (counts, OTHER raw strings,
        duplicates, skipped images), ``groups`` (per-group statistics), ``tests`` (list of
        :class:`TestResult` dicts), ``warnings``.
    tests:
        The between-group :class:`TestResult` records.
    images:
        Per-image table: ``image_id, group, truth, n_readings, n_correct, reader_accuracy,
        consensus, consensus_votes, consensus_status, consensus_correct`` (+ ``cnn_pred,
        cnn_correct`` with CNN predictions).
    readings:
        The normalised readings used: ``reader_id, image_id, diagnosis_raw, diagnosis,
        correct, group``.
    """

    summary: dict[str, Any]
    tests: tuple[TestResult, ...]
    images: pd.DataFrame
    readings: pd.DataFrame = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready summary (``readers.json``)."""
        return self.summary


# --------------------------------------------------------------------------- outputs


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def _fmt_ci(ci: Any, pct: bool = False) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{_fmt(ci[0], pct)}, {_fmt(ci[1], pct)}]"


def _fmt_p(p: Any) -> str:
    if p is None or (isinstance(p, float) and not math.isfinite(p)):
        return "-"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _cell(x: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(study: ReaderStudy) -> str:
    """A readable report (``readers.md``): inputs, per-group tables, readers and tests."""
    s = study.summary
    inp, opt = s["inputs"], s["options"]
    conf = int(round(100 * opt["confidence"]))
    lines = [
        "# Reader study",
        "",
        f"{inp['n_readings']} readings by {inp['n_readers']} readers of {inp['n_images']} "
        f"images; classes {', '.join(s['classes'])}. Consensus: plurality answer per image; "
        f"ties {opt['ties']}, OTHER consensus {opt['other']}. Intervals: {conf}% "
        f"({opt['n_bootstrap']} bootstrap resamples, {opt['n_permutations']} permutations, "
        f"seed {opt['seed']}).",
        "",
        "## Groups",
        "",
        "| group | images (unread) | readings | readers | pooled accuracy | consensus accuracy "
        "| consensus n (ties, OTHER) | Cohen's kappa consensus vs truth | Fleiss' kappa "
        "(images) | mean pairwise kappa | CNN accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, g in s["groups"].items():
        c = g["consensus"]
        cnn = g.get("cnn")
        lines.append(
            f"| {_cell(name)} | {g['n_images']} ({g['n_unread']}) | {g['n_readings']} | "
            f"{g['n_readers']} | {_fmt(g['pooled_accuracy'], True)}"
            f"{_fmt_ci(g['pooled']['ci'], True)} | {_fmt(c['accuracy'], True)}"
            f"{_fmt_ci(c['ci'], True)} | {c['n']} ({c['n_ties']}, "
            f"{c['n_other']}) | {_fmt(g['cohen']['kappa'])}{_fmt_ci(g['cohen']['ci'])} | "
            f"{_fmt(g['fleiss']['kappa'])}{_fmt_ci(g['fleiss']['ci'])} ({g['fleiss']['n_images']})"
            f" | {_fmt(g['pairwise']['mean_kappa'])} | "
            + (f"{_fmt(cnn['accuracy'], True)} (n={cnn['n']})" if cnn else "-") + " |"
        )
    reasons = [f"- {name}: Fleiss' kappa {g['fleiss']['reason']}" for name, g in
               s["groups"].items() if g["fleiss"]["reason"]]
    reasons += [f"- {name}: Cohen's kappa {g['cohen']['reason']}" for name, g in
                s["groups"].items() if g["cohen"]["reason"]]
    if reasons:
        lines += ["", *reasons]
    names = list(s["groups"])
    lines += ["", "## Readers (accuracy, n)", "",
              "| reader | " + " | ".join(names) + " |",
              "| --- |" + " --- |" * len(names)]
    for r in inp["readers"]:
        cells = []
        for name in names:
            st = s["groups"][name]["readers"].get(r)
            cells.append(f"{_fmt(st['accuracy'], True)} ({st['n']})" if st else "-")
        lines.append(f"| {_cell(r)} | " + " | ".join(cells) + " |")
    cnn_models = {n: g["cnn"].get("models") for n, g in s["groups"].items()
                  if g.get("cnn") and g["cnn"].get("models")}
    if cnn_models:
        models = sorted({m for v in cnn_models.values() for m in v})
        lines += ["", "## CNN models on the same images (accuracy, n)", "",
                  "| model | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        for m in models:
            cells = []
            for name in names:
                st = (cnn_models.get(name) or {}).get(m)
                cells.append(f"{_fmt(st['accuracy'], True)} ({st['n']})" if st else "-")
            lines.append(f"| {_cell(m)} | " + " | ".join(cells) + " |")
    lines += ["", "## Tests between groups", ""]
    if s["tests"]:
        lines += ["| test | effect | CI | statistic | p | method | assumes |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for t in s["tests"]:
            lines.append(
                f"| {_cell(t['name'])} | {_fmt(t['effect'])} | {_fmt_ci(t['ci']).strip()} | "
                f"{_fmt(t['statistic'])} | {_fmt_p(t['p_value'])} | {_cell(t['method'])} | "
                f"{_cell(t['assumptions'])} |"
            )
        lines += ["", "Effects are differences (first group minus second) unless the test says "
                  "log odds ratio. The two-way cluster bootstrap and the image permutation test "
                  "are the valid inference for readers x images; Fisher's test on pooled "
                  "readings treats correlated readings as independent."]
    else:
        lines.append(s.get("tests_note") or "No tests.")
    if s["warnings"]:
        lines += ["", "## Notes", "", *[f"- {w}" for w in s["warnings"]]]
    return "\n".join(lines) + "\n"


def write_reader_report(study: ReaderStudy, out_dir: str | Path) -> dict[str, Path]:
    """Write ``readers.json``, ``readers.md`` and ``reader_images.csv`` atomically in ``out_dir``.

    Returns the written paths by kind (``json``, ``markdown``, ``images``).
    """
    from skin_core.io import atomic_write_csv, atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "json": atomic_write_json(out / "readers.json", study.summary),
        "markdown": atomic_write_text(out / "readers.md", render_markdown(study)),
        "images": atomic_write_csv(out / "reader_images.csv", study.images),
    }
