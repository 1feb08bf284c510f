"""The :class:`Dataset` record: the canonical dataset table plus where it came from.

Built by the loaders of :mod:`skin_core.data.tables` (which re-exports everything here);
import it from there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from skin_core.constants import AGE, IMAGE_ID, LABEL, LESION_ID, SEX, SITE

__all__ = ["Dataset", "SKIPPED_COLUMNS"]

#: Columns of :attr:`Dataset.skipped`: where the bad row is and why it was skipped.
SKIPPED_COLUMNS: tuple[str, ...] = ("file", "line", IMAGE_ID, "column", "reason")


def _empty_skipped() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="str") for c in SKIPPED_COLUMNS}).astype(
        {"line": "Int64"}
    )


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: the canonical table plus where it came from.

    Attributes
    ----------
    table:
        One row per image, columns ``image_id, path, label, lesion_id, age_approx, sex,
        anatom_site_general`` (+ optional ``source``, ``split``), index ``0..N-1``.
        ``path`` is an absolute path string; ``age_approx`` is float (NaN = missing);
        ``lesion_id``, ``sex`` and ``anatom_site_general`` are strings or NaN.
    classes:
        The ordered class codes; ``label`` values are always among them.
    spec:
        The dataset spec the table was loaded from (``"frame"`` for in-memory frames).
    root:
        The dataset folder (absolute), or ``None``.
    skipped:
        Rows skipped with ``skip_bad=True``: columns ``file, line, image_id, column, reason``
        (one row per skipped image). Empty when nothing was skipped.
    notes:
        Human-readable remarks about values that were read as missing (unknown sex,
        unmapped sites, images without metadata...). Nothing is changed silently.
    """

    table: pd.DataFrame
    classes: tuple[str, ...]
    spec: str = "frame"
    root: Path | None = None
    skipped: pd.DataFrame = field(default_factory=_empty_skipped)
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.table)

    def label_index(self) -> np.ndarray:
        """``label`` as an ``(N,)`` int64 array of indices into :attr:`classes`."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return self.table[LABEL].map(lookup).to_numpy(dtype=np.int64)

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the classes and the sorted ``(image_id, label)`` pairs.

        Independent of row order and of paths or metadata, so the same images with the same
        labels give the same fingerprint on every machine.
        """
        h = hashlib.sha256()
        h.update(("classes\t" + "\t".join(self.classes) + "\n").encode("utf-8"))
        pairs = self.table[[IMAGE_ID, LABEL]].sort_values(IMAGE_ID, kind="stable")
        text = "\n".join(pairs[IMAGE_ID].astype(str) + "\t" + pairs[LABEL].astype(str))
        h.update(text.encode("utf-8"))
        return h.hexdigest()

    def summary(self) -> dict:
        """Counts for display and ``--json``.

        Returns
        -------
        dict
            ``spec``; ``n_images``; ``classes`` (class -> image count, in class order, zeros
            included); ``n_lesions`` (distinct known ``lesion_id`` values); ``n_groups``
            (lesions plus images without a ``lesion_id``: the units that folds keep together);
            ``missing`` (column -> missing count for ``lesion_id`` and the metadata columns);
            ``n_skipped``; ``notes``; ``fingerprint``.
        """
        t = self.table
        counts = t[LABEL].value_counts()
        lesions = t[LESION_ID]
        n_lesions = int(lesions.nunique(dropna=True))
        return {
            "spec": self.spec,
            "n_images": len(t),
            "classes": {c: int(counts.get(c, 0)) for c in self.classes},
            "n_lesions": n_lesions,
            "n_groups": n_lesions + int(lesions.isna().sum()),
            "missing": {c: int(t[c].isna().sum()) for c in (LESION_ID, AGE, SEX, SITE)},
            "n_skipped": len(self.skipped),
            "notes": list(self.notes),
            "fingerprint": self.fingerprint(),
        }
