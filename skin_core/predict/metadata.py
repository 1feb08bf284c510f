"""Patient metadata of a prediction: validation, aliases, per-image lookup."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from skin_core.constants import AGE, IMAGE_ID, SEX, SEX_VALUES, SITE, SITE_VALUES
from skin_core.errors import ConfigError

#: Accepted age range in years (inclusive); outside it the age is treated as missing.
AGE_RANGE = (0.0, 120.0)

#: Sex spellings mapped onto the vocabulary (case-insensitive).
_SEX_ALIASES = {"m": "male", "f": "female", "man": "male", "woman": "female"}

#: Site spellings mapped onto the ISIC 2019 vocabulary (case-insensitive).
_SITE_ALIASES = {
    "back": "posterior torso", "chest": "anterior torso", "abdomen": "anterior torso",
    "head": "head/neck", "neck": "head/neck", "face": "head/neck", "scalp": "head/neck",
    "arm": "upper extremity", "hand": "upper extremity", "leg": "lower extremity",
    "foot": "lower extremity", "palms": "palms/soles", "soles": "palms/soles",
    "oral": "oral/genital", "genital": "oral/genital", "torso": "trunk",
}


def normalize_metadata(age: Any = None, sex: Any = None, site: Any = None
                       ) -> tuple[dict[str, Any], list[str]]:
    """Validate patient metadata; bad values become missing with a warning.

    Returns
    -------
    (metadata, warnings)
        ``{"age_approx": float | None, "sex": str | None, "anatom_site_general": str | None}``
        and a list of one-sentence warnings.
    """
    warnings: list[str] = []
    age_v: float | None = None
    if age is not None and not (isinstance(age, str) and not age.strip()):
        try:
            a = float(age)
        except (TypeError, ValueError):
            a = float("nan")
            warnings.append(f"Age {age!r} is not a number; it was treated as missing.")
        else:
            if not math.isfinite(a) or not AGE_RANGE[0] <= a <= AGE_RANGE[1]:
                warnings.append(f"Age {age!r} is outside {AGE_RANGE[0]:.0f}-{AGE_RANGE[1]:.0f} "
                                "years; it was treated as missing.")
            else:
                age_v = a
        if age_v is None and not warnings:
            warnings.append(f"Age {age!r} is not a number; it was treated as missing.")
    sex_v = _vocab(sex, SEX_VALUES, _SEX_ALIASES, "Sex", warnings)
    site_v = _vocab(site, SITE_VALUES, _SITE_ALIASES, "Anatomical site", warnings)
    return {AGE: age_v, SEX: sex_v, SITE: site_v}, warnings


def _vocab(value: Any, vocab: tuple[str, ...], aliases: Mapping[str, str], what: str,
           warnings: list[str]) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    v = str(value).strip().lower().replace("_", " ")
    if not v or v in ("unknown", "nan", "none"):
        return None
    v = aliases.get(v, v)
    if v in vocab:
        return v
    warnings.append(f"{what} {value!r} is not one of {', '.join(vocab)}; it was treated as "
                    "unknown.")
    return None


def _normalize_any(m: Any) -> tuple[dict[str, Any], list[str]]:
    if m is None:
        return normalize_metadata()
    if isinstance(m, Mapping):
        return normalize_metadata(m.get(AGE, m.get("age")), m.get(SEX),
                                  m.get(SITE, m.get("site")))
    age, sex, site = m
    return normalize_metadata(age, sex, site)


def _metadata_lookup(metadata: Any) -> Any:
    if metadata is None:
        return lambda _id: None
    if hasattr(metadata, "columns"):  # DataFrame
        df = metadata
        if IMAGE_ID not in df.columns:
            raise ConfigError("The metadata table needs an image_id column (plus age_approx, "
                              "sex, anatom_site_general).")
        recs = {str(r[IMAGE_ID]): {c: (None if _isna(r.get(c)) else r.get(c))
                                   for c in (AGE, SEX, SITE)}
                for r in df.to_dict("records")}
        return lambda image_id: recs.get(image_id)
    if isinstance(metadata, Mapping):
        return lambda image_id: metadata.get(image_id)
    return lambda _id: metadata


def _isna(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


__all__ = ["AGE_RANGE", "normalize_metadata"]
