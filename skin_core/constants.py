"""Class vocabularies and column names shared by every module (see DESIGN.md)."""

from __future__ import annotations

#: ISIC 2019 diagnostic classes in the official column order (UNK is never a training label).
ISIC2019_CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
ISIC2019_UNKNOWN = "UNK"

#: HAM10000 ``dx`` codes, alphabetical as in the original publication.
HAM10000_CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

#: HAM10000 ``dx`` -> ISIC 2019 class (``akiec`` is split into AK / SCC by the ISIC 2019 labels).
HAM10000_TO_ISIC2019: dict[str, str | None] = {
    "akiec": None,
    "bcc": "BCC",
    "bkl": "BKL",
    "df": "DF",
    "mel": "MEL",
    "nv": "NV",
    "vasc": "VASC",
}

# Dataset table columns (DESIGN.md "Dataset table").
IMAGE_ID = "image_id"
PATH = "path"
LABEL = "label"
LESION_ID = "lesion_id"
AGE = "age_approx"
SEX = "sex"
SITE = "anatom_site_general"
FOLD = "fold"

#: ``fold`` value of the calibration split in ``folds.csv``: a lesion-grouped, class-stratified
#: share of the images that no CNN trains on and that no out-of-fold prediction covers (made by
#: ``skin-core data folds --calibration FRACTION``); folds ``0..K-1`` hold the other images.
CALIBRATION_FOLD = -1

METADATA_COLUMNS: tuple[str, ...] = (AGE, SEX, SITE)
TABLE_COLUMNS: tuple[str, ...] = (IMAGE_ID, PATH, LABEL, LESION_ID, AGE, SEX, SITE)
OPTIONAL_COLUMNS: tuple[str, ...] = ("source", "split")

#: Values of ``sex`` after normalisation (anything else is reported and becomes missing).
SEX_VALUES: tuple[str, ...] = ("male", "female")

#: The ISIC 2019 ``anatom_site_general`` vocabulary (the values of
#: ``ISIC_2019_Training_Metadata.csv``).
ISIC2019_SITE_VALUES: tuple[str, ...] = (
    "anterior torso",
    "head/neck",
    "lateral torso",
    "lower extremity",
    "oral/genital",
    "palms/soles",
    "posterior torso",
    "upper extremity",
)

#: HAM10000's ``localization`` ``trunk``: the torso without the side (anterior, posterior or
#: lateral) recorded, so it maps to none of the ISIC 2019 torso values (1,404 HAM10000 images).
SITE_TRUNK = "trunk"

#: ``anatom_site_general`` vocabulary of the dataset table (missing stays missing): the ISIC
#: 2019 values plus ``trunk``, appended last so the ISIC 2019 values keep their positions.
SITE_VALUES: tuple[str, ...] = (*ISIC2019_SITE_VALUES, SITE_TRUNK)

#: Probability column prefix in OOF and prediction tables: ``prob_<CLASS>``.
PROB_PREFIX = "prob_"

#: Groups of the difficulty analysis and the reader study.
GROUP_DIFFICULT = "difficult"
GROUP_CONTROL = "control"
GROUP_OTHER = "other"

#: Reader answer outside the class vocabulary (kept, counted wrong, never dropped silently).
OTHER_DIAGNOSIS = "OTHER"

#: Default cap on decoded image size (pixels); larger images are refused as decompression bombs.
MAX_IMAGE_PIXELS = 100_000_000

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp",
)


def prob_columns(classes: tuple[str, ...] | list[str]) -> list[str]:
    """Column names ``prob_<CLASS>`` for ``classes``, in order."""
    return [f"{PROB_PREFIX}{c}" for c in classes]
