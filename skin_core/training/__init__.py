"""K-fold x architecture training with out-of-fold predictions, local and Ray backends.

Public face::

    from skin_core.training import TrainConfig, train_run
    result = train_run(dataset, out="runs/demo", config=TrainConfig(archs=("resnet18",)))

See :mod:`skin_core.training.run` for the run directory layout and docs/training.md.
"""

from __future__ import annotations

from skin_core.training.config import TrainConfig, config_from_dict, load_config_file, model_ids
from skin_core.training.engine import CANCEL_FILE, FoldJob, TrainingCancelled, train_fold
from skin_core.training.run import RunResult, assemble_oof, train_run

__all__ = [
    "CANCEL_FILE",
    "FoldJob",
    "RunResult",
    "TrainConfig",
    "TrainingCancelled",
    "assemble_oof",
    "config_from_dict",
    "load_config_file",
    "model_ids",
    "train_fold",
    "train_run",
]
