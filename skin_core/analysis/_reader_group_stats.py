"""Reader-study statistics of one group and between two groups.

Private part of :mod:`skin_core.analysis.readers`: :func:`_group_summary` (accuracy per
reader and pooled, consensus, Cohen's and Fleiss' kappa, pairwise agreement, CNN on the same
images) and :func:`_between_group_tests` (Fisher, paired readers, two-way cluster bootstrap,
image permutation test, crossed GLMM), both called by
:func:`~skin_core.analysis.readers.analyze_readers` on its reader x image matrices. The
estimators themselves are in :mod:`skin_core.analysis.reader_stats`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from skin_core.analysis import reader_stats as rs
from skin_core.analysis._reader_inputs import _key
from skin_core.analysis.records import TestResult


def _f(x: Any) -> float | None:
    """A finite float or None (for JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _ci(ci: tuple[float, float]) -> list[float | None]:
    return [_f(ci[0]), _f(ci[1])]


def _group_summary(
    gname, cols, answers, truth_idx, read, correct, votes, counted, cons_ok, is_tie, winner,
    other_index, readers, images, cats, draws, g, group_file_counts, confidence, seed,
    n_bootstrap, cnn_pred, cnn_for,
) -> dict[str, Any]:
    """Statistics of one group (see :func:`analyze_readers`)."""
    a = answers[:, cols]
    rd_ = read[:, cols]
    co = correct[:, cols]
    n_img = int(cols.size)
    n_read = int(rd_.sum())
    n_ok = int(co.sum())
    rng_seed = seed + 1000 * (g + 1)

    reader_stats: dict[str, Any] = {}
    for r, name in enumerate(readers):
        n = int(rd_[r].sum())
        if n == 0:
            continue
        k = int(co[r].sum())
        reader_stats[str(name)] = {"accuracy": k / n, "n": n, "correct": k,
                                   "ci": _ci(rs.wilson_ci(k, n, confidence=confidence))}
    active = [r for r in range(len(readers)) if rd_[r].any()]

    # consensus
    cnt = counted[cols]
    ok = cons_ok[cols]
    tie = is_tie[cols]
    oth = (winner[cols] == other_index) & ~tie & rd_.any(axis=0)
    n_cons = int(cnt.sum())
    pooled_ci = rs.percentile_ci(draws.pooled[g], confidence)
    cons_ci = rs.percentile_ci(draws.consensus[g], confidence)
    consensus = {
        "accuracy": _f(ok.sum() / n_cons) if n_cons else None,
        "n": n_cons,
        "n_correct": int(ok.sum()),
        "n_ties": int(tie.sum()),
        "n_other": int(oth.sum()),
        "ci": _ci(cons_ci),
        "ci_method": "bootstrap over images (reader panel fixed), percentile",
    }

    # Cohen's kappa consensus vs truth (tie = its own category, never matching the truth)
    tie_cat = len(cats)
    cons_cat = np.where(tie, tie_cat, winner[cols])[cnt]
    tr = truth_idx[cols][cnt]
    cohen: dict[str, Any] = {"kappa": None, "n": int(cnt.sum()), "ci": [None, None],
                             "reason": None}
    if cnt.sum() >= 2:
        kc = len(cats) + 1
        kappa = rs.cohen_kappa(cons_cat, tr)
        cohen["kappa"] = _f(kappa)
        if math.isfinite(kappa):
            onehot = np.zeros((cons_cat.size, kc * kc))
            onehot[np.arange(cons_cat.size), cons_cat * kc + tr] = 1
            kb = rs.image_bootstrap(
                lambda w: rs.kappa_from_confusion((w @ onehot).reshape(-1, kc, kc)),
                cons_cat.size, n_resamples=n_bootstrap, seed=rng_seed)
            cohen["ci"] = _ci(rs.percentile_ci(kb, confidence))
            cohen["ci_method"] = "bootstrap over images (readers fixed), percentile"
        else:
            cohen["reason"] = "undefined: chance agreement is 1 (a single category throughout)"
    else:
        cohen["reason"] = "undefined: fewer than 2 images with a counted consensus"

    # Fleiss' kappa among readers, on images read by all of the group's readers
    fleiss: dict[str, Any] = {"kappa": None, "n_images": 0, "n_readers": len(active),
                              "ci": [None, None], "reason": None}
    if len(active) < 2:
        fleiss["reason"] = ("undefined: a single reader (agreement among readers needs at least "
                            "two)" if active else "undefined: no readings")
    else:
        full = rd_[active].all(axis=0)
        fleiss["n_images"] = int(full.sum())
        if full.sum() < 1:
            fleiss["reason"] = (f"undefined: no image in this group was read by all "
                                f"{len(active)} readers")
        else:
            sub = a[np.ix_(active, np.nonzero(full)[0])]
            counts = np.zeros((sub.shape[1], len(cats)))
            for rrow in sub:
                counts[np.arange(sub.shape[1]), rrow] += 1
            kappa = float(rs.fleiss_kappa_counts(counts))
            fleiss["kappa"] = _f(kappa)
            if math.isfinite(kappa):
                kb = rs.image_bootstrap(lambda w: rs.fleiss_kappa_counts(counts, w),
                                        counts.shape[0], n_resamples=n_bootstrap,
                                        seed=rng_seed + 1)
                fleiss["ci"] = _ci(rs.percentile_ci(kb, confidence))
                fleiss["ci_method"] = "bootstrap over images (readers fixed), percentile"
            else:
                fleiss["reason"] = "undefined: every answer is the same category"

    # pairwise agreement
    pairs = []
    if len(active) >= 2:
        pw = rs.pairwise_agreement(a[active], len(cats))
        for x in range(len(active)):
            for y in range(x + 1, len(active)):
                if pw["n"][x, y] == 0:
                    continue
                pairs.append({"reader_a": str(readers[active[x]]),
                              "reader_b": str(readers[active[y]]), "n": int(pw["n"][x, y]),
                              "agreement": float(pw["agreement"][x, y]),
                              "kappa": _f(pw["kappa"][x, y])})
    kappas = [p["kappa"] for p in pairs if p["kappa"] is not None]
    pairwise = {
        "n_pairs": len(pairs),
        "mean_agreement": _f(np.mean([p["agreement"] for p in pairs])) if pairs else None,
        "mean_kappa": _f(np.mean(kappas)) if kappas else None,
        "pairs": pairs,
        "reason": None if pairs else ("undefined: a single reader" if len(active) < 2 else
                                      "no two readers read a common image"),
    }

    out: dict[str, Any] = {
        "n_images": n_img,
        "n_images_in_group_file": int(group_file_counts.get(gname, n_img)),
        "n_unread": int(max(group_file_counts.get(gname, n_img) - n_img, 0)),
        "n_readings": n_read,
        "n_readers": len(active),
        "pooled_accuracy": _f(n_ok / n_read) if n_read else None,
        "pooled": {"accuracy": _f(n_ok / n_read) if n_read else None, "n": n_read,
                   "n_correct": n_ok, "ci": _ci(pooled_ci),
                   "ci_method": "two-way (reader x image) cluster bootstrap, percentile"},
        "consensus": consensus,
        "readers": reader_stats,
        "fleiss_kappa": fleiss["kappa"],
        "fleiss": fleiss,
        "cohen_kappa_consensus": cohen["kappa"],
        "cohen": cohen,
        "pairwise": pairwise,
        "cnn": None,
    }
    if cnn_for is not None:
        out["cnn"] = _cnn_summary(cols, images, truth_idx, cats, cnt, tie, winner, other_index,
                                  cnn_pred, cnn_for, confidence)
    return out


def _cnn_summary(cols, images, truth_idx, cats, cnt, tie, winner, other_index, cnn_pred,
                 cnn_for, confidence) -> dict[str, Any]:
    ids = [images[c] for c in cols]
    preds = [p if isinstance(p, str) else None for p in (cnn_for.get(i, None) for i in ids)]
    have = np.array([p is not None for p in preds], dtype=bool)
    c_idx = {c: k for k, c in enumerate(cats)}
    p_idx = np.array([c_idx.get(p, other_index) if p is not None else -1 for p in preds])
    t = truth_idx[cols]
    ok = have & (p_idx == t)
    n = int(have.sum())
    out: dict[str, Any] = {
        "accuracy": _f(ok.sum() / n) if n else None, "n": n, "n_correct": int(ok.sum()),
        "n_missing": int((~have).sum()),
        "ci": _ci(rs.wilson_ci(int(ok.sum()), n, confidence=confidence)),
        "ci_method": "Wilson score interval over images",
    }
    # agreement with a class consensus (not tie, not OTHER)
    cls_cons = have & ~tie & (winner[cols] != other_index) & cnt
    m = int(cls_cons.sum())
    out["agreement_with_consensus"] = {
        "n": m,
        "agreement": _f(np.mean(p_idx[cls_cons] == winner[cols][cls_cons])) if m else None,
        "kappa": _f(rs.cohen_kappa(p_idx[cls_cons], winner[cols][cls_cons])) if m >= 2 else None,
    }
    if cnn_pred is not None and cnn_pred.per_model is not None:
        pm = cnn_pred.per_model
        pmk = pm.copy()
        pmk.index = pm.index.map(_key)
        models = {}
        for model in pm.columns:
            col = pmk[model]
            mp = [col.get(_key(i), None) for i in ids]
            mp = [None if (p is None or (isinstance(p, float) and math.isnan(p))) else p
                  for p in mp]
            mh = np.array([p is not None for p in mp])
            mi = np.array([c_idx.get(p, -1) if p is not None else -1 for p in mp])
            mn = int(mh.sum())
            mk = int((mh & (mi == t)).sum())
            models[str(model)] = {"accuracy": _f(mk / mn) if mn else None, "n": mn,
                                  "correct": mk}
        out["models"] = models
    return out


def _between_group_tests(
    pair, gname_idx, answers, truth_idx, read, correct, counted, cons_ok, image_group, readers,
    images, draws, confidence, seed, n_permutations, glmm, warnings,
) -> list[TestResult]:
    la, lb = pair
    ga, gb = gname_idx[la], gname_idx[lb]
    in_a_img = image_group == ga
    in_b_img = image_group == gb
    tests: list[TestResult] = []

    # Fisher on consensus (images) and on pooled readings
    tests.append(rs.fisher_difference(
        int(cons_ok[in_a_img].sum()), int(counted[in_a_img].sum()),
        int(cons_ok[in_b_img].sum()), int(counted[in_b_img].sum()),
        name=f"consensus accuracy: {la} vs {lb} (Fisher, images)", unit="images",
        labels=pair, confidence=confidence,
        assumptions="images independent, one consensus answer each; inference is conditional "
        "on this reader panel (reader sampling ignored)",
    ))
    tests.append(rs.fisher_difference(
        int(correct[:, in_a_img].sum()), int(read[:, in_a_img].sum()),
        int(correct[:, in_b_img].sum()), int(read[:, in_b_img].sum()),
        name=f"pooled reading accuracy: {la} vs {lb} (Fisher, readings)", unit="readings",
        labels=pair, confidence=confidence,
        assumptions="every reading independent: IGNORES reader/image clustering (readings of "
        "one image, and of one reader, are correlated), so the p-value is too small and the CI "
        "too narrow; shown for comparison with the published analysis only",
    ))

    # paired per reader
    diffs, ids = [], []
    for r, name in enumerate(readers):
        na, nb = read[r, in_a_img].sum(), read[r, in_b_img].sum()
        if na and nb:
            diffs.append(correct[r, in_a_img].sum() / na - correct[r, in_b_img].sum() / nb)
            ids.append(str(name))
    paired = rs.paired_reader_tests(np.array(diffs), labels=pair, confidence=confidence)
    for p in paired:
        tests.append(TestResult(**{**p.__dict__, "extra": {**p.extra, "readers": ids}}))

    # two-way cluster bootstrap + image permutation
    obs_pooled = correct[:, in_a_img].sum() / max(read[:, in_a_img].sum(), 1) - \
        correct[:, in_b_img].sum() / max(read[:, in_b_img].sum(), 1)
    d_pooled = draws.pooled[ga] - draws.pooled[gb]
    ci_pooled = rs.percentile_ci(d_pooled, confidence)
    boot_assume = ("readers and images are independent random samples from their populations "
                   "(crossed design); percentile interval, mildly conservative (Owen 2007)")
    tests.append(TestResult(
        name=f"pooled reading accuracy: {la} vs {lb} (two-way cluster bootstrap)",
        effect=float(obs_pooled), ci=ci_pooled, statistic=math.nan, p_value=math.nan,
        method="two-way (reader x image) cluster bootstrap: readers and images resampled "
        "independently (images within group), percentile CI; estimate only, no p-value",
        effect_name=f"pooled accuracy difference ({la} - {lb})", assumptions=boot_assume,
        n={"readers": len(readers), f"{la}_images": int(in_a_img.sum()),
           f"{lb}_images": int(in_b_img.sum())},
        extra={"n_resamples": int(d_pooled.size),
               "n_valid": int(np.isfinite(d_pooled).sum()),
               "se": _f(np.nanstd(d_pooled, ddof=1)) if d_pooled.size > 1 else None},
    ))
    obs_cons = (cons_ok[in_a_img].sum() / max(counted[in_a_img].sum(), 1)
                - cons_ok[in_b_img].sum() / max(counted[in_b_img].sum(), 1))
    d_cons = draws.consensus[ga] - draws.consensus[gb]
    tests.append(TestResult(
        name=f"consensus accuracy: {la} vs {lb} (image bootstrap)",
        effect=float(obs_cons) if counted[in_a_img].any() and counted[in_b_img].any()
        else math.nan,
        ci=rs.percentile_ci(d_cons, confidence), statistic=math.nan, p_value=math.nan,
        method="cluster bootstrap over images within each group, reader panel fixed (a "
        "consensus belongs to its panel), percentile CI; estimate only, no p-value",
        effect_name=f"consensus accuracy difference ({la} - {lb})",
        assumptions="images independent random samples of their groups; conditional on this "
        "reader panel",
        n={"readers": len(readers), f"{la}_images": int(in_a_img.sum()),
           f"{lb}_images": int(in_b_img.sum())},
        extra={"n_resamples": int(d_cons.size), "n_valid": int(np.isfinite(d_cons).sum())},
    ))
    both = in_a_img | in_b_img
    obs, p, null = rs.image_permutation_test(
        correct[:, both].sum(axis=0), read[:, both].sum(axis=0), in_a_img[both],
        n_permutations=n_permutations, seed=seed,
    )
    tests.append(TestResult(
        name=f"pooled reading accuracy: {la} vs {lb} (image permutation test)",
        effect=obs, ci=ci_pooled, statistic=obs, p_value=p,
        method="permutation test: group labels shuffled across images, each image keeping all "
        "its readings; two-sided p = (1 + #|T*| >= |T|) / (1 + n); CI from the two-way "
        "cluster bootstrap",
        effect_name=f"pooled accuracy difference ({la} - {lb}); statistic = the same difference",
        assumptions="images exchangeable between the groups under the null (no group effect); "
        "readings of one image kept together; conditional on these readers",
        n={f"{la}_images": int(in_a_img.sum()), f"{lb}_images": int(in_b_img.sum()),
           "readings": int(read[:, both].sum())},
        extra={"n_permutations": int(n_permutations), "seed": int(seed),
               "ci_method": "two-way cluster bootstrap, percentile"},
    ))

    if glmm:
        rr, ii = np.nonzero(read[:, both])
        cols = np.nonzero(both)[0][ii]
        try:
            tests.append(rs.crossed_glmm(
                correct[rr, cols], np.asarray(readers, dtype=object)[rr],
                np.asarray(images, dtype=object)[cols], in_a_img[cols], labels=pair,
                confidence=confidence,
            ))
        except (ValueError, np.linalg.LinAlgError, FloatingPointError) as e:
            warnings.append(f"the crossed GLMM could not be fitted ({e}); the bootstrap and "
                            "permutation results stand")
    return tests
