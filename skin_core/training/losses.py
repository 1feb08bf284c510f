"""The training loss and the order images are drawn in: class weighting and class-balanced
sampling, both against the class mix of the stream the network actually trains on.

``sampling`` (how an epoch draws its ``n`` training images):

- ``uniform`` (default): every training image once, in a random order;
- ``balanced``: ``n`` draws with replacement, each class equally likely (Kang et al., ICLR
  2020: class-balanced sampling), so a rare class's images recur within an epoch;
- ``sqrt``: ``n`` draws with replacement, class ``k`` with probability ``~ sqrt(n_k)`` (the
  square-root sampling of Mahajan et al. 2018), between the two.

``loss_weighting`` then corrects for the imbalance the stream still has, not the dataset's:
inverse-frequency weights ``N / (K * m_k)`` and the logit adjustment ``log(m_k / N)`` use the
stream's expected class counts ``m_k`` (equal to the dataset's ``n_k`` with ``uniform``; all
equal with ``balanced``, where both corrections vanish), so the combinations never correct twice.
All draws come from the job's torch generator (exact resume).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLINGS: tuple[str, ...] = ("uniform", "balanced", "sqrt")


def stream_counts(labels: np.ndarray, k: int, sampling: str = "uniform") -> np.ndarray:
    """Expected images of each class in one epoch's ``len(labels)`` draws under ``sampling``."""
    counts = np.bincount(labels, minlength=k).astype(float)
    if sampling == "uniform":
        return counts
    power = {"balanced": 0.0, "sqrt": 0.5}[sampling]
    share = np.where(counts > 0, counts ** power, 0.0)
    return len(labels) * share / max(share.sum(), 1e-12)


def class_weights(labels: np.ndarray, k: int, sampling: str = "uniform") -> np.ndarray:
    """Inverse-frequency weights ``N / (K * m_k)`` of the stream (0 for absent classes)."""
    counts = stream_counts(labels, k, sampling)
    present = counts > 0
    w = np.zeros(k)
    w[present] = len(labels) / (present.sum() * counts[present])
    return w


def logit_adjustment(labels: np.ndarray, k: int, sampling: str = "uniform") -> np.ndarray:
    """``log`` of the stream's class prior (a class absent gets the log of half an image)."""
    counts = stream_counts(labels, k, sampling)
    return np.log(np.maximum(counts, 0.5) / max(len(labels), 1))


def epoch_order(labels: np.ndarray, k: int, sampling: str, generator: Any) -> np.ndarray:
    """Indices into ``labels`` of one epoch's draws, in training order."""
    import torch

    n = len(labels)
    if sampling == "uniform":
        return torch.randperm(n, generator=generator).numpy()
    counts = np.bincount(labels, minlength=k).astype(float)
    per_image = stream_counts(labels, k, sampling)[labels] / counts[labels]
    return torch.multinomial(torch.as_tensor(per_image, dtype=torch.float64), n,
                             replacement=True, generator=generator).numpy()


def make_loss(labels: np.ndarray, k: int, *, weighting: str, sampling: str,
              label_smoothing: float, device: str) -> Any:
    """``loss(logits, targets)`` of a training job (see the module docstring).

    ``logit_adjusted`` (Menon et al., ICLR 2021): the loss sees logits + log(stream prior), so
    the network's own logits learn the class-balanced posterior: served as they are, no
    change at prediction time.
    """
    import torch

    weights = (class_weights(labels, k, sampling) if weighting == "inverse_frequency"
               else np.ones(k))
    ce = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32, device=device),
        label_smoothing=label_smoothing)
    log_prior = torch.tensor(logit_adjustment(labels, k, sampling), dtype=torch.float32,
                             device=device) if weighting == "logit_adjusted" else None

    def loss_fn(out: Any, y: Any) -> Any:
        return ce(out if log_prior is None else out + log_prior, y)

    return loss_fn
