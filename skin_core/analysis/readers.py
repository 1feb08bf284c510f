"""Reader studies: expert readers vs truth vs CNNs, with valid between-group inference.

A reader study shows a set of images (e.g. the *difficult* images every CNN gets wrong and a
*control* sample) to several readers. This module reads their answers (``readings.csv``:
``reader_id, image_id, diagnosis[, comment]``), the truth, the image groups and optionally
CNN predictions, and computes per group: per-reader and pooled accuracy, the plurality
consensus and its accuracy, Cohen's kappa of the consensus vs the truth, Fleiss' kappa and
pairwise agreement among readers, and the CNN's accuracy on the same images; and between two
groups a list of :class:`~skin_core.analysis.records.TestResult` records, from the naive
(Fisher on pooled readings: ignores clustering) to the valid ones for a crossed design
(two-way reader x image cluster bootstrap, image-label permutation test, crossed GLMM).
Definitions and sources are in :mod:`skin_core.analysis.reader_stats`.

Input normalisation
-------------------
Every field is stripped of surrounding whitespace and matched case-insensitively (reader and
image ids included; the truth's spelling of an image id is kept). A diagnosis is mapped onto
the class vocabulary ``classes``:

* a class code in any letter case (``mel``, ``MEL``);
* a HAM10000 ``dx`` code onto ISIC 2019 (``nv`` -> ``NV`` ...) and back;
  ``akiec`` (actinic keratosis *or* intraepithelial carcinoma) maps to ``AK`` or ``SCC`` only
  when exactly one of them is in the vocabulary; with both (ISIC 2019) it is ambiguous and
  becomes OTHER. ``AK`` and ``SCC`` both map to ``akiec`` in the HAM10000 vocabulary;
* the English names (``melanoma``, ``nevus``/``naevus``, ``basal cell carcinoma``, ...);
* anything else (``other``, ``Altro``, free text, blank) becomes ``OTHER``: kept, counted as
  wrong, and reported with its raw strings. Never dropped silently.

Example
-------
>>> study = analyze_readers(readings, truth, groups=groups)          # doctest: +SKIP
>>> study.summary["groups"]["difficult"]["consensus"]["accuracy"]    # doctest: +SKIP
>>> write_reader_report(study, "out/readers")                        # doctest: +SKIP

Code layout: this module is the public face (:func:`analyze_readers` and the option
constants). Normalisation and the input readers are in ``analysis/_reader_inputs.py``, the
per-group statistics and between-group tests in ``analysis/_reader_group_stats.py``, and the
:class:`ReaderStudy` record with its report writers in ``analysis/_reader_report.py``. Their
public names are re-exported here: import them from ``skin_core.analysis.readers``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_core.analysis import reader_stats as rs
from skin_core.analysis._reader_group_stats import _between_group_tests, _group_summary
from skin_core.analysis._reader_inputs import (
    CnnPredictions,
    _key,
    _keys,
    _normalizer,
    normalize_diagnosis,
    read_cnn_predictions,
    read_groups,
    read_readings,
    read_truth,
)
from skin_core.analysis._reader_report import ReaderStudy, render_markdown, write_reader_report
from skin_core.analysis.records import TestResult
from skin_core.constants import GROUP_CONTROL, GROUP_DIFFICULT, OTHER_DIAGNOSIS
from skin_core.errors import ConfigError, DataError

__all__ = [
    "ALL_GROUP",
    "DEDUPE_CHOICES",
    "OTHER_CHOICES",
    "TIES_CHOICES",
    "CnnPredictions",
    "ReaderStudy",
    "analyze_readers",
    "normalize_diagnosis",
    "read_cnn_predictions",
    "read_groups",
    "read_readings",
    "read_truth",
    "render_markdown",
    "write_reader_report",
]

TIES_CHOICES = ("drop", "wrong")
OTHER_CHOICES = ("drop", "wrong")
DEDUPE_CHOICES = ("error", "first", "last")
#: Group name used when no groups are given.
ALL_GROUP = "all"


def _check_choice(value: str, choices: tuple[str, ...], param: str) -> str:
    if value not in choices:
        raise ConfigError(f"The {param!r} parameter of analyze_readers must be one of "
                          f"{set(choices)}. Got {value!r} instead.")
    return value


def analyze_readers(
    readings: pd.DataFrame | str | Path,
    truth: pd.Series | pd.DataFrame | str | Path,
    *,
    classes: Iterable[str] | None = None,
    groups: pd.Series | pd.DataFrame | str | Path | None = None,
    cnn: CnnPredictions | pd.DataFrame | str | Path | None = None,
    compare: tuple[str, str] | None = None,
    ties: str = "drop",
    other: str = "drop",
    dedupe: str = "error",
    skip_missing: bool = False,
    n_bootstrap: int = 2000,
    n_permutations: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    glmm: bool = True,
) -> ReaderStudy:
    """Analyse a reader study: accuracy, consensus, agreement, CNN comparison and tests.

    Parameters
    ----------
    readings:
        ``readings.csv`` path or frame (see :func:`read_readings`).
    truth:
        Dataset spec, truth CSV, frame or Series (see :func:`read_truth`).
    classes:
        Class vocabulary (default: from the truth).
    groups:
        ``difficulty.csv`` / ``image_id,group`` CSV, frame or Series. Without groups every
        image is in one group ``"all"`` and no between-group test is run. Read images absent
        from the group file are reported (``inputs.n_ungrouped_images``) and left out of every
        group; group images nobody read are counted per group (``n_unread``).
    cnn:
        ``oof.csv`` / predictions CSV path or frame, or :class:`CnnPredictions`.
    compare:
        The two groups ``(a, b)`` compared by the tests (effects are ``a - b``). Default
        ``("difficult", "control")`` when both exist, else the two groups when there are
        exactly two (alphabetical), else no tests.
    ties, other:
        ``"drop"`` (default, as in the published study) leaves images whose consensus is a tie
        / OTHER out of consensus accuracy; ``"wrong"`` counts them as wrong.
    dedupe:
        Several readings of one image by one reader: ``"error"`` (default) raises,
        ``"first"`` / ``"last"`` keeps one; the count is reported either way.
    skip_missing:
        Leave out (and list) readings of images absent from the truth instead of raising.
    n_bootstrap, n_permutations, confidence, seed:
        Resampling sizes, interval level and seed (all resampling is deterministic per seed).
    glmm:
        Also fit the crossed GLMM (variational Bayes; about a second for 1,000 readings).

    Returns
    -------
    :class:`ReaderStudy`.

    Raises
    ------
    DataError
        Duplicate readings with ``dedupe="error"``; images missing from the truth without
        ``skip_missing``; malformed files.
    ConfigError
        An invalid option value.
    """
    _check_choice(ties, TIES_CHOICES, "ties")
    _check_choice(other, OTHER_CHOICES, "other")
    _check_choice(dedupe, DEDUPE_CHOICES, "dedupe")
    if not 0 < confidence < 1:
        raise ConfigError(f"The 'confidence' parameter of analyze_readers must be in (0, 1). "
                          f"Got {confidence!r} instead.")
    if n_bootstrap < 1 or n_permutations < 1:
        raise ConfigError("The 'n_bootstrap' and 'n_permutations' parameters of analyze_readers "
                          f"must be >= 1. Got {n_bootstrap!r} and {n_permutations!r} instead.")
    policy = rs.ConsensusPolicy(ties=ties, other=other)
    warnings: list[str] = []

    # ---- inputs
    rd = read_readings(readings)
    truth_s, classes = read_truth(truth, classes=classes)
    norm = _normalizer(classes)
    truth_key = {_key(i): i for i in truth_s.index}
    rd["image_key"] = _keys(rd["image_id"])
    rd["reader_key"] = _keys(rd["reader_id"])
    reader_name = rd.drop_duplicates("reader_key").set_index("reader_key")["reader_id"]
    missing_mask = ~rd["image_key"].isin(truth_key.keys())
    missing_ids = sorted(rd.loc[missing_mask, "image_id"].unique())
    if missing_ids and not skip_missing:
        raise DataError(
            f"The readings name {len(missing_ids)} images absent from the truth (e.g. "
            f"{', '.join(missing_ids[:5])}); fix the ids or pass skip_missing (--skip-missing) "
            "to leave them out."
        )
    if missing_ids:
        warnings.append(f"{len(missing_ids)} images absent from the truth were left out "
                        f"({int(missing_mask.sum())} readings): {', '.join(missing_ids[:20])}"
                        + (" ..." if len(missing_ids) > 20 else ""))
    rd = rd.loc[~missing_mask].copy()
    dup_mask = rd.duplicated(["reader_key", "image_key"], keep=False)
    n_dup_rows = int(dup_mask.sum())
    n_dup_pairs = int(rd.loc[dup_mask].drop_duplicates(["reader_key", "image_key"]).shape[0])
    if n_dup_rows:
        first = rd.loc[dup_mask].iloc[0]
        if dedupe == "error":
            raise DataError(
                f"The readings have {n_dup_pairs} duplicate (reader_id, image_id) pairs "
                f"({n_dup_rows} rows), e.g. reader {first['reader_id']} on image "
                f"{first['image_id']}; remove them or pass dedupe='first'|'last' (--dedupe)."
            )
        rd = rd.drop_duplicates(["reader_key", "image_key"], keep=dedupe)
        warnings.append(f"{n_dup_pairs} duplicate (reader, image) pairs ({n_dup_rows} rows); "
                        f"kept the {dedupe} reading of each.")
    if rd.empty:
        raise DataError("No reading is left after removing images absent from the truth; "
                        "check that the readings and the truth use the same image ids.")
    rd["image_id"] = rd["image_key"].map(truth_key)
    rd["reader_id"] = rd["reader_key"].map(reader_name)
    rd["diagnosis_raw"] = rd["diagnosis"]
    rd["diagnosis"] = rd["diagnosis_raw"].map(norm)
    rd["truth"] = rd["image_id"].map(truth_s)
    rd["correct"] = (rd["diagnosis"] == rd["truth"]).to_numpy(bool)
    other_raw = rd.loc[rd["diagnosis"] == OTHER_DIAGNOSIS, "diagnosis_raw"].replace("", "<blank>")
    other_counts = {str(k): int(v) for k, v in other_raw.value_counts().items()}
    if other_counts:
        warnings.append(f"{int(sum(other_counts.values()))} answers outside the class vocabulary "
                        f"were kept as OTHER (counted wrong): "
                        + ", ".join(f"{k!r} x{v}" for k, v in list(other_counts.items())[:10]))

    # ---- groups
    read_images = pd.Index(rd["image_id"].unique())
    if groups is None:
        grp = pd.Series(ALL_GROUP, index=read_images)
        group_file_counts = {ALL_GROUP: int(read_images.size)}
    else:
        g = read_groups(groups)
        gkey = pd.Series(g.to_numpy(), index=g.index.map(_key))
        group_file_counts = {str(k): int(v) for k, v in g.value_counts().sort_index().items()}
        grp = pd.Series(read_images.map(lambda i: gkey.get(_key(i), None)), index=read_images)
        ungrouped = grp[grp.isna()].index
        if ungrouped.size:
            warnings.append(f"{ungrouped.size} read images are in no group and were left out of "
                            f"the group statistics: {', '.join(map(str, ungrouped[:10]))}"
                            + (" ..." if ungrouped.size > 10 else ""))
        grp = grp.dropna()
    if grp.empty:
        raise DataError("None of the read images is in the groups file; check that the groups "
                        "and the readings use the same image ids.")
    group_names = sorted(group_file_counts, key=lambda s: (
        s != GROUP_DIFFICULT, s != GROUP_CONTROL, s))
    rd["group"] = rd["image_id"].map(grp)

    # ---- CNN
    cnn_pred: CnnPredictions | None
    if cnn is None or isinstance(cnn, CnnPredictions):
        cnn_pred = cnn
    else:
        cnn_pred = read_cnn_predictions(cnn, classes)
    if cnn_pred is not None:
        ck = pd.Series(cnn_pred.pred.to_numpy(), index=cnn_pred.pred.index.map(_key))
        ck = ck[~ck.index.duplicated(keep="last")]
        cnn_for = pd.Series(read_images.map(lambda i: ck.get(_key(i), None)), index=read_images)
        n_no_cnn = int(cnn_for.isna().sum())
        if n_no_cnn:
            warnings.append(f"{n_no_cnn} of {read_images.size} read images have no CNN "
                            f"prediction in {cnn_pred.source} (e.g. "
                            f"{', '.join(map(str, cnn_for[cnn_for.isna()].index[:5]))}); CNN "
                            "accuracy uses the others")
    else:
        cnn_for = None

    # ---- matrices over grouped images
    used = rd.dropna(subset=["group"])
    readers = sorted(rd["reader_id"].unique(), key=str)
    images = list(grp.index)
    r_idx = {r: k for k, r in enumerate(readers)}
    i_idx = {i: k for k, i in enumerate(images)}
    cats = list(classes) + [OTHER_DIAGNOSIS]
    c_idx = {c: k for k, c in enumerate(cats)}
    other_index = len(classes)
    answers = np.full((len(readers), len(images)), -1, dtype=np.int64)
    if not used.empty:
        answers[used["reader_id"].map(r_idx).to_numpy(int),
                used["image_id"].map(i_idx).to_numpy(int)] = used["diagnosis"].map(
                    c_idx).to_numpy(int)
    truth_idx = np.array([c_idx[truth_s[i]] for i in images], dtype=np.int64)
    gname_idx = {gname: k for k, gname in enumerate(group_names)}
    image_group = np.array([gname_idx[grp[i]] for i in images], dtype=np.int64)
    read = answers >= 0
    correct = read & (answers == truth_idx[None, :])
    votes = np.zeros((len(images), len(cats)))
    rr, ii = np.nonzero(read)
    np.add.at(votes, (ii, answers[rr, ii]), 1)
    winner, is_tie, has = rs.plurality(votes)
    counted, cons_ok = rs.consensus_outcome(winner, is_tie, has, truth_idx, other_index, policy)

    draws = rs.two_way_bootstrap(
        correct, read, image_group, n_groups=len(group_names), consensus_counted=counted,
        consensus_correct=cons_ok, n_resamples=n_bootstrap, seed=seed,
    )

    # ---- per image table
    status = np.where(~has, "unread", np.where(is_tie, "tie", np.where(
        winner == other_index, "other", "ok")))
    img = pd.DataFrame({
        "image_id": images,
        "group": [grp[i] for i in images],
        "truth": [truth_s[i] for i in images],
        "n_readings": read.sum(axis=0),
        "n_correct": correct.sum(axis=0),
    })
    with np.errstate(invalid="ignore", divide="ignore"):
        img["reader_accuracy"] = img["n_correct"] / img["n_readings"]
    img["consensus"] = np.where(status == "tie", "", np.array(cats, dtype=object)[winner])
    img["consensus_votes"] = votes.max(axis=1).astype(int) if images else []
    img["consensus_status"] = status
    img["consensus_correct"] = pd.array(
        [bool(o) if c else pd.NA for o, c in zip(cons_ok, counted, strict=True)], dtype="boolean")
    if cnn_for is not None:
        img["cnn_pred"] = [p if isinstance(p, str) else None
                           for p in (cnn_for.get(i, None) for i in images)]
        img["cnn_correct"] = pd.array(
            [pd.NA if p is None else bool(p == t)
             for p, t in zip(img["cnn_pred"], img["truth"], strict=True)], dtype="boolean")

    # ---- per group
    z_conf = confidence
    groups_out: dict[str, Any] = {}
    for gname in group_names:
        g = gname_idx[gname]
        cols = np.nonzero(image_group == g)[0]
        groups_out[gname] = _group_summary(
            gname, cols, answers, truth_idx, read, correct, votes, counted, cons_ok, is_tie,
            winner, other_index, readers, images, cats, draws, g, group_file_counts, z_conf,
            seed, n_bootstrap, cnn_pred, cnn_for,
        )

    # ---- tests
    tests: list[TestResult] = []
    pair = _pick_compare(compare, group_names, group_file_counts)
    test_note = None
    if pair is None:
        test_note = ("no between-group tests: " + ("only one group" if len(group_names) < 2 else
                     "pass compare=(a, b) (--compare A B) to choose two of "
                     + ", ".join(group_names)))
        if len(group_names) >= 2 or groups is not None:
            warnings.append(test_note)
    elif not ((image_group == gname_idx[pair[0]]).any()
              and (image_group == gname_idx[pair[1]]).any()):
        empty = [x for x in pair if not (image_group == gname_idx[x]).any()]
        test_note = f"no between-group tests: nobody read an image of group {empty[0]!r}"
        warnings.append(test_note)
    else:
        tests = _between_group_tests(
            pair, gname_idx, answers, truth_idx, read, correct, counted, cons_ok, image_group,
            readers, images, draws, confidence, seed, n_permutations, glmm, warnings,
        )

    summary: dict[str, Any] = {
        "classes": list(classes),
        "options": {"ties": ties, "other": other, "dedupe": dedupe,
                    "skip_missing": bool(skip_missing), "n_bootstrap": int(n_bootstrap),
                    "n_permutations": int(n_permutations), "confidence": confidence,
                    "seed": int(seed), "glmm": bool(glmm),
                    "compare": list(pair) if pair else None},
        "inputs": {
            "n_readings": int(rd.shape[0]),
            "n_readers": len(readers),
            "readers": [str(r) for r in readers],
            "n_images": int(read_images.size),
            "n_grouped_images": len(images),
            "n_ungrouped_images": int(read_images.size - len(images)),
            "n_duplicate_pairs": n_dup_pairs,
            "n_duplicate_rows": n_dup_rows,
            "n_missing_truth": len(missing_ids),
            "missing_truth_ids": missing_ids[:100],
            "n_other_answers": int(sum(other_counts.values())),
            "other_answers": other_counts,
            "group_file_counts": group_file_counts,
            "cnn_source": cnn_pred.source if cnn_pred is not None else None,
        },
        "groups": groups_out,
        "tests": [t.to_dict() for t in tests],
        "tests_note": test_note,
        "warnings": warnings,
    }
    rd_out = rd[["reader_id", "image_id", "diagnosis_raw", "diagnosis", "truth", "correct",
                 "group"]].reset_index(drop=True)
    return ReaderStudy(summary=summary, tests=tuple(tests), images=img, readings=rd_out)


def _pick_compare(
    compare: tuple[str, str] | None, names: list[str], counts: Mapping[str, int]
) -> tuple[str, str] | None:
    if compare is not None:
        a, b = (_key(x) for x in compare)
        for x in (a, b):
            if x not in counts:
                raise ConfigError(f"The 'compare' parameter of analyze_readers names group {x!r}, "
                                  f"which is not one of the groups {sorted(counts)}.")
        if a == b:
            raise ConfigError(f"The 'compare' parameter needs two different groups. Got {a!r} "
                              "twice.")
        return (a, b)
    if GROUP_DIFFICULT in names and GROUP_CONTROL in names:
        return (GROUP_DIFFICULT, GROUP_CONTROL)
    if len(names) == 2:
        return (sorted(names)[0], sorted(names)[1])
    return None
