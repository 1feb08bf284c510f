"""File layout of the demo dataset (ISIC 2019 training set + ISIC 2018 Task 1 masks)."""

from __future__ import annotations

IMAGES_DIR = "ISIC_2019_Training_Input"
GROUND_TRUTH_CSV = "ISIC_2019_Training_GroundTruth.csv"
METADATA_CSV = "ISIC_2019_Training_Metadata.csv"
TRUTH_CSV = "generation_truth.csv"
README_TXT = "README.txt"
#: Folder of the lesion masks beside the images (ISIC 2018 Task 1 file names inside).
MASKS_DIR = "ISIC_2019_Training_GroundTruth_Masks"
MASK_SUFFIX = "_segmentation.png"


def init_worker() -> None:
    """Rendering process initialiser: one OpenCV thread per process."""
    import cv2

    cv2.setNumThreads(1)
