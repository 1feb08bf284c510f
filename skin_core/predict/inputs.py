"""Decoded images and the batch pipeline's input buffers (bounded prefetch)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from skin_core.errors import ConfigError

#: Files larger than this are refused before reading (the app's upload limit).
MAX_UPLOAD_BYTES = 50 * 1024 * 1024

#: Images with a side shorter than this are refused (no dermoscopic detail survives).
MIN_SIDE = 32

#: Batches that :meth:`Predictor.iter_predict` decodes ahead of the one running through the models.
PREFETCH_BATCHES = 2


@dataclass
class _Prepared:
    name: str
    image_id: str
    inputs: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    stats: np.ndarray | None = None
    raw: bytes | None = None
    error: str | None = None


@dataclass(frozen=True)
class ForwardBatch:
    """One batch of :meth:`Predictor.forward_batches`: the decoded items (input order) and,
    for the items without ``error``, every model's ``(B, K)`` probabilities (mean over its
    fold models), rows in the order of those items."""

    items: list[_Prepared]
    per_model: dict[str, np.ndarray]
    features: list[np.ndarray] | None = None
    fold_probs: dict[tuple[str, int], np.ndarray] | None = None


def _source_name(src: Any, name: str | None) -> tuple[str, str]:
    if name:
        return name, Path(name).stem or name
    if isinstance(src, (str, os.PathLike)):
        return str(src), Path(src).stem
    return "uploaded image", "uploaded_image"


def _size_of(src: Any) -> int | None:
    if isinstance(src, (bytes, bytearray)):
        return len(src)
    if isinstance(src, (str, os.PathLike)):
        try:
            return os.stat(src).st_size
        except OSError:
            return None
    return None


class BatchInputs:
    """The :class:`~skin_core.predict.Predictor`'s batch decoding: decoding threads fill
    preallocated, normalised network inputs ahead of the forward passes."""

    def _decoded_batches(self, images: Iterable[Any], *, batch_size: int, workers: int,
                         progress: bool, total: int | None
                         ) -> Iterator[tuple[list[_Prepared], dict[tuple, Any]]]:
        """Decoded batches with their filled input buffers (bounded prefetch, see below).

        Batch work on the CPU first tunes the process's allocator
        (:func:`~skin_core.models.device.tune_cpu_allocator`): without it glibc returns every
        batch's activations to the system and page-faults them in again, and a forward pass of
        64 images spends about half its time in the kernel (2.4x slower; docs/performance.md).
        """
        from tqdm.auto import tqdm

        if self.device == "cpu":
            from skin_core.models.device import tune_cpu_allocator

            tune_cpu_allocator()

        if batch_size < 1 or workers < 1:
            raise ConfigError(f"batch_size and workers must be at least 1; got {batch_size} and "
                              f"{workers}.")
        bar = tqdm(total=total, disable=not progress, unit="img", desc="predict",
                   dynamic_ncols=True)
        it = iter(images)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        # Bounded prefetch: PREFETCH_BATCHES batches decode while one runs through the
        # models. Each batch owns a set of preallocated input tensors that the decoding threads
        # fill row by row (uint8 crop -> normalised float32 by table lookup, the GIL released),
        # so the main thread neither stacks nor converts; a set is reused once its batch ran.
        inflight: deque[tuple[list[Any], dict[tuple, Any]]] = deque()
        free: list[dict[tuple, Any]] = []
        for key in self._input_keys():
            self._input_lut(key)  # built once, before the decoding threads need it

        def submit_batch() -> None:
            srcs = list(islice(it, batch_size))
            if srcs:
                bufs = free.pop() if free else self._input_buffers(batch_size)
                inflight.append(([pool.submit(self._prepare_row, src, bufs, j)
                                  for j, src in enumerate(srcs)], bufs))

        try:
            for _ in range(PREFETCH_BATCHES):
                submit_batch()
            while inflight:
                futures, bufs = inflight.popleft()
                submit_batch()  # keep the decoders busy while this batch runs
                items = [f.result() for f in futures]
                yield items, bufs
                free.append(bufs)
                bar.update(len(items))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()

    def _input_keys(self) -> list[tuple]:
        """Distinct network inputs ``(size, crop, mean, std)``, in member order."""
        keys = [(p.input_size, p.crop, tuple(p.mean), tuple(p.std)) for _, p, _ in self._members]
        return list(dict.fromkeys(keys))

    def _input_buffers(self, rows: int) -> dict[tuple, tuple[Any, np.ndarray]]:
        """Per input key, a preallocated ``(rows, 3, S, S)`` float32 tensor with the strides of
        :func:`~skin_core.training.augment.to_float`'s output (a permuted ``(B, S, S, 3)``
        block, so the networks see the memory layout of training's evaluation) and the
        ``(rows, S, S, 3)`` ndarray view of the same memory that the decoding threads fill."""
        import torch

        pin = self.device == "cuda"
        out = {}
        for key in self._input_keys():
            block = torch.empty((rows, key[0], key[0], 3), dtype=torch.float32, pin_memory=pin)
            out[key] = (block.permute(0, 3, 1, 2), block.numpy())
        return out

    def _input_lut(self, key: tuple) -> np.ndarray:
        """``(3, 256)`` float32: :func:`~skin_core.training.augment.to_float` of every uint8
        value in each channel for input ``key``. ``to_float`` is elementwise, so looking a
        crop's values up here gives its output bit for bit (tested) without running torch
        operators (and their OpenMP thread teams) in the decoding threads."""
        luts = self.__dict__.setdefault("_luts", {})
        if key not in luts:
            import torch

            from skin_core.training.augment import to_float

            values = torch.arange(256, dtype=torch.uint8).view(1, 1, 256, 1).expand(1, 1, 256, 3)
            luts[key] = to_float(values.contiguous(), key[2], key[3])[0, :, 0, :].numpy().copy()
        return luts[key]

    def _prepare_row(self, src: Any, buffers: Mapping[tuple, tuple[Any, np.ndarray]],
                     row: int) -> _Prepared:
        """:meth:`prepare`, then the image's normalised float inputs into row ``row`` of
        ``buffers`` (runs in a decoding thread; NumPy releases the GIL)."""
        item = self.prepare(src)
        if item.error is None:
            for key, (_, block) in buffers.items():
                lut, crop, dst = self._input_lut(key), item.inputs[(key[0], key[1])], block[row]
                for c in range(3):
                    np.take(lut[c], crop[:, :, c], out=dst[:, :, c], mode="clip")
        return item
