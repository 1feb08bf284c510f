"""Null distributions of consistent errors with the **lesion** as the unit.

Under the image-level null of :mod:`skin_core.analysis.significance` every image is an
independent unit. Images of one lesion are not: a model that misreads a lesion tends to
misread all its images, so, even with models that err independently of each other, the
number ``X`` of images wrong by all models varies far more than the image-level null allows
(with 3-5 images per lesion the nominal 5 % image-level permutation test rejects about 11 %
of simulated null studies: docs/difficulty.md). The two nulls here keep each model's errors
on a lesion together.

Strata (:func:`skin_core.analysis.clusters.lesion_strata`): single-image clusters are
stratified by class; multi-image lesions by their label sequence (class and number of images).

Permutation null (:func:`block_tail_counts` for the multi-image lesions; the single-image
ones use the within-class hypergeometric sampler of the image-level test)
    For each model independently, the lesions of a stratum exchange their error patterns
    (the ``k``-image error vector of the model on the lesion) by a uniformly random
    permutation. Each model keeps exactly its multiset of lesion patterns per stratum (so its
    error count per class and per lesion size), the link between models is broken, and a
    lesion's images stay together. The first model is held fixed (the statistic is invariant
    under permuting all models alike). Only lesions on which a model errs move: their
    targets are drawn by partial Fisher-Yates shuffles vectorised over permutations and
    strata (:func:`random_injections`), so the cost grows with the number of erring lesions;
    for "wrong by all" only the lesions the first model errs on are tracked. The test
    compares this sampler with literal shuffles (:func:`permute_lesions`).

Exact null (:func:`exact_pieces`)
    Lesions are independent; on a lesion of stratum ``s`` model ``m``'s error pattern is drawn
    from that model's observed patterns on the lesions of ``s`` (their empirical
    distribution), independently of the other models. The distribution of
    ``Y`` = images of the lesion wrong by ``>= m`` models is enumerated exactly over the
    pattern combinations (:func:`pattern_pmf`, a dynamic programme over models that keeps,
    per image, the count of models wrong so far, capped at ``m``, or "cannot reach ``m``");
    ``X`` is the sum of independent ``Y`` (:func:`~skin_core.analysis.poisson_binomial.
    iid_sum_tail`). With one image per lesion this is exactly the image-level exact test.
"""

from __future__ import annotations

import numpy as np

from skin_core.analysis.clusters import LesionStrata

__all__ = ["PatternLimitError", "block_tail_counts", "exact_pieces", "pattern_pmf",
           "permute_lesions", "random_injections"]

#: Most distinct per-image count states the exact pattern enumeration keeps per stratum.
MAX_PATTERN_STATES = 200_000

#: Permutations drawn together: small enough for the shuffled index arrays to stay in cache.
CHUNK = 1024

_DEAD = -1


class PatternLimitError(RuntimeError):
    """The exact enumeration of lesion error patterns would exceed its state limit."""


# --------------------------------------------------------------------------------------------
# exact null
# --------------------------------------------------------------------------------------------


def pattern_pmf(patterns: np.ndarray, min_wrong: int, *,
                max_states: int | None = None) -> np.ndarray:
    """PMF of the number of a lesion's images wrong by ``>= min_wrong`` models.

    Parameters
    ----------
    patterns:
        ``(M, n, k)`` booleans: model ``m``'s error pattern on each of the ``n`` lesions of one
        stratum (``k`` images each, canonical order). Model ``m``'s pattern on a new lesion is
        drawn from its ``n`` observed patterns, independently of the other models.
    min_wrong:
        Threshold ``m`` (``1 <= m <= M``).
    max_states:
        Limit on the distinct count states kept (raises :class:`PatternLimitError` beyond);
        default :data:`MAX_PATTERN_STATES`.

    Returns
    -------
    numpy.ndarray
        ``(k + 1,)`` PMF.
    """
    limit = MAX_PATTERN_STATES if max_states is None else max_states
    n_models, n, k = patterns.shape
    states = np.zeros((1, k), dtype=np.int8)
    prob = np.ones(1)
    for j in range(n_models):
        uniq, counts = np.unique(patterns[j].astype(np.int8), axis=0, return_counts=True)
        if states.shape[0] * uniq.shape[0] > 20 * limit:
            raise PatternLimitError(f"{states.shape[0]} x {uniq.shape[0]} pattern states")
        new = states[:, None, :] + uniq[None, :, :]
        new[np.broadcast_to(states[:, None, :] == _DEAD, new.shape)] = _DEAD
        np.minimum(new, min_wrong, out=new)  # reached m: done, stays m
        remaining = n_models - j - 1
        new[(new >= 0) & (new < min_wrong) & (new + remaining < min_wrong)] = _DEAD
        p_new = (prob[:, None] * (counts / n)[None, :]).ravel()
        states, inv = np.unique(new.reshape(-1, k), axis=0, return_inverse=True)
        prob = np.bincount(inv.ravel(), weights=p_new, minlength=states.shape[0])
        if states.shape[0] > limit:
            raise PatternLimitError(f"{states.shape[0]} pattern states")
    y = (states == min_wrong).sum(axis=1)
    return np.bincount(y, weights=prob, minlength=k + 1)


def exact_pieces(err: np.ndarray, lab: np.ndarray, strata: LesionStrata,
                 min_wrong: int) -> list[tuple[np.ndarray, int]]:
    """``(pmf_s, n_s)`` per stratum: the lesion-level null of ``X`` as a sum of independents.

    Single-image clusters form one stratum per class; each block of multi-image lesions one.
    """
    single_lab = lab[strata.single]
    blocks = [strata.single[single_lab == c][:, None] for c in np.unique(single_lab)]
    return [(pattern_pmf(err[:, block], min_wrong), int(block.shape[0]))
            for block in (*blocks, *strata.blocks)]


# --------------------------------------------------------------------------------------------
# permutation null
# --------------------------------------------------------------------------------------------


def random_injections(problems: list[tuple[int, int]], n_permutations: int,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random ordered ``w``-subsets of ``0 .. n-1``, for several ``(n, w)`` at once.

    For each problem, row ``b`` of its ``(n_permutations, w)`` result is the first ``w``
    entries of a uniformly random permutation of ``n`` (independent across rows and
    problems). Partial Fisher-Yates shuffles, all problems and permutations advanced
    together one step at a time, so the Python loop runs ``max(w)`` times.
    """
    if not problems:
        return []
    ns = np.array([n for n, _ in problems], dtype=np.int64)
    ws = np.array([w for _, w in problems], dtype=np.int64)
    off = np.r_[0, np.cumsum(ns)[:-1]]
    dtype = np.int16 if ns.max() < 2**15 else np.int32
    b = n_permutations
    arr = np.empty((int(ns.sum()), b), dtype=dtype)
    arr[:] = (np.arange(ns.sum()) - np.repeat(off, ns)).astype(dtype)[:, None]
    flat = arr.reshape(-1)
    cols = np.arange(b, dtype=np.int64)
    steps = np.minimum(ws, ns - 1)  # the last position of a full shuffle needs no draw
    by_steps = np.argsort(-steps, kind="stable")
    for t in range(int(steps.max())):
        act = by_steps[: int(np.sum(steps > t))]
        pos = off[act] + t
        span = (ns[act] - t).astype(float)
        r = pos[:, None] + (rng.random((act.size, b)) * span[:, None]).astype(np.int64)
        idx = r * b + cols
        picked = flat[idx]
        flat[idx] = arr[pos]
        arr[pos] = picked
    return [arr[o: o + w].T for o, w in zip(off, ws, strict=True)]


def _pack(patterns: np.ndarray, bits: int) -> np.ndarray:
    """``(n, k)`` 0/1 patterns -> ``(n, words)`` uint64, ``bits`` bits per image position."""
    n, k = patterns.shape
    per_word = 64 // bits
    words = -(-k // per_word)
    out = np.zeros((n, words), dtype=np.uint64)
    for pos in range(k):
        w, sh = divmod(pos, per_word)
        out[:, w] |= patterns[:, pos].astype(np.uint64) << np.uint64(sh * bits)
    return out


def _count_at_least(c: np.ndarray, k: int, bits: int, thresholds: np.ndarray) -> np.ndarray:
    """``(B, T)``: per row of packed counts ``c`` ``(B, R, words)``, positions ``>= t``."""
    per_word = 64 // bits
    mask = np.uint64((1 << bits) - 1)
    out = np.zeros((c.shape[0], thresholds.size), dtype=np.int64)
    for pos in range(k):
        w, sh = divmod(pos, per_word)
        v = (c[:, :, w] >> np.uint64(sh * bits)) & mask
        for t, th in enumerate(thresholds):
            out[:, t] += (v >= np.uint64(th)).sum(axis=1)
    return out


def block_tail_counts(err: np.ndarray, blocks: tuple[np.ndarray, ...], n_permutations: int,
                      rng: np.random.Generator, thresholds: tuple[int, ...]) -> np.ndarray:
    """``(n_permutations, T)`` images in ``blocks`` wrong by ``>= thresholds[t]`` models.

    Each block is a stratum of multi-image lesions (``(n_s, k)`` image indices); every model
    but the first permutes its lesion error patterns within each block. Per lesion, the
    count of models wrong on each image is packed into 4-bit fields of 64-bit words, so a
    lesion is updated in one addition.

    When every threshold is ``M`` only the ``R`` lesions the first model errs on can count,
    and only those are tracked: of model ``j``'s ``w`` erring lesions (of ``n``), the number
    landing on tracked lesions is hypergeometric, ``h ~ Hypergeom(w, n - w, R)``, and the
    tracked lesions they land on and the patterns that land are uniformly random ordered
    ``h``-subsets of each side (the same distribution as permuting all ``n``, at a fraction
    of the cost).
    """
    n_models = err.shape[0]
    thr = np.asarray(thresholds, dtype=np.int64)
    restricted = bool(thr.min() == n_models)
    bits = 4 if n_models < 16 else 8
    out = np.zeros((n_permutations, thr.size), dtype=np.int64)
    work = []  # (packed patterns per model, nonzero lesions per model, tracked rows, n, k)
    for block in blocks:
        pats = err[:, block]  # (M, n, k)
        n, k = block.shape
        if n == 1:  # a stratum of one lesion: nothing to permute
            out += (pats.sum(axis=0)[..., None] >= thr).sum(axis=(0, 1))
            continue
        rows = np.flatnonzero(pats[0].any(axis=1)) if restricted else np.arange(n)
        if rows.size:
            packed = [_pack(p, bits) for p in pats]
            nonzero = [np.flatnonzero(p.any(axis=1)) for p in pats]
            work.append((packed, nonzero, rows, n, k))
    if not work:
        return out
    cells = sum((w[2].size + 1) * w[0][0].shape[1] for w in work)
    step = max(1, min(n_permutations, CHUNK, 16_000_000 // cells))
    for s in range(0, n_permutations, step):
        b = min(step, n_permutations - s)
        brow = np.arange(b)[:, None]
        counts = []
        for packed, _, rows, _, _ in work:
            c = np.zeros((b, rows.size + 1, packed[0].shape[1]), dtype=np.uint64)  # + trash
            c[:, : rows.size] = packed[0][rows]
            counts.append(c)
        for j in range(1, n_models):
            problems: list[tuple[int, int]] = []
            moves = []
            for c, (packed, nonzero, rows, n, _) in zip(counts, work, strict=True):
                nz, pj = nonzero[j], packed[j]
                if nz.size == 0:
                    continue
                if nz.size == n and (pj == pj[0]).all():  # the same on every lesion
                    c[:, : rows.size] += pj[0]
                    continue
                if restricted:
                    h = rng.hypergeometric(nz.size, n - nz.size, rows.size, size=b)
                    top = int(h.max())
                    if top == 0:
                        continue
                    problems += [(rows.size, top), (nz.size, top)]
                    moves.append((c, pj[nz], rows.size, h, top))
                else:
                    problems.append((n, nz.size))
                    moves.append((c, pj[nz], n, None, nz.size))
            drawn = random_injections(problems, b, rng)
            it = iter(drawn)
            for c, add, trash, h, top in moves:
                if h is None:  # all lesions tracked: model j's erring lesions -> targets
                    c[brow, next(it)] += add[None]
                    continue
                slots, which = next(it), next(it)
                slots = np.where(np.arange(top)[None, :] < h[:, None], slots, trash)
                # duplicates only ever hit the trash slot, which is never read
                c[brow, slots] += add[which]
        for c, (_, _, rows, _, k) in zip(counts, work, strict=True):
            out[s: s + b] += _count_at_least(c[:, : rows.size], k, bits, thr)
    return out


def permute_lesions(err: np.ndarray, lab: np.ndarray, strata: LesionStrata,
                    rng: np.random.Generator) -> np.ndarray:
    """One literal draw of the lesion-level permutation null (every model permuted).

    Single-image clusters are shuffled within class, multi-image lesions' error patterns
    within their stratum; independently per model. The reference for :func:`block_buckets`.
    """
    out = np.empty_like(err)
    out[:] = err
    single_lab = lab[strata.single]
    groups = [strata.single[single_lab == c][:, None] for c in np.unique(single_lab)]
    for m in range(err.shape[0]):
        for block in (*groups, *strata.blocks):
            if block.shape[0] > 1:
                out[m, block] = err[m, block[rng.permutation(block.shape[0])]]
    return out
