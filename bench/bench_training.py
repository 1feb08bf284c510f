"""Training throughput: image cache vs the pure-compute floor vs decoding JPEGs every epoch.

Side by side in one process; floor and cached batches alternate in pairs (order swapped every
pair) and the reported ratio is the median of the per-pair ratios, likewise for whole epochs,
so slow drifts in machine load cancel (the machine may be shared: only these ratios count):

- **floor**: the same model, batch size and optimiser stepping on a batch already in memory
  as a normalised float tensor (no loading, no augmentation);
- **cached**: the real training path, :func:`skin_core.training.engine.load_batch` (rows from
  the ``uint8`` memmap cache, batched augmentation on tensors) + the same step;
- **decode**: an epoch that decodes every 600x450 JPEG each time (Pillow open, RGB, resize
  the shorter side to S, centre crop; what a plain ImageFolder-style loader does in the main
  process), then the same augmentation and step.

Images: the first ``--n`` real HAM10000 images (``SKIN_CORE_HAM10000_DIR``) upscaled to 600x450
JPEGs (quality 90) in a temporary folder; random images when the variable is unset.

Usage::

    .venv/bin/python bench/bench_training.py --archs resnet10t mobilenetv2_100 --size 128 \\
        --batch 32 --repeats 5 --json bench-training.json

Prints a Markdown table (images/s per arch for floor, cached, decode; the two ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_jpegs(folder: Path, n: int) -> list[str]:
    """``n`` 600x450 JPEGs: upscaled real HAM10000 images when available, else random."""
    folder.mkdir(parents=True, exist_ok=True)
    src = os.environ.get("SKIN_CORE_HAM10000_DIR")
    originals = sorted((Path(src) / "images").glob("*.jpg"))[:n] if src else []
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        if i < len(originals):
            img = Image.open(originals[i]).convert("RGB").resize((600, 450), Image.BICUBIC)
        else:
            small = rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((600, 450), Image.BICUBIC)
        p = folder / f"img{i:05d}.jpg"
        img.save(p, quality=90)
        paths.append(str(p))
    return paths


def decode_batch(paths: list[str], size: int):  # noqa: ANN201 - torch tensor
    """Plain decode of full-size JPEGs: open, RGB, resize shorter side, centre crop."""
    import torch

    out = np.empty((len(paths), size, size, 3), np.uint8)
    for k, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            out[k] = np.asarray(im.crop((left, top, left + size, top + size)))
    return torch.from_numpy(out)


def bench_arch(arch: str, arr: np.ndarray, paths: list[str], labels: np.ndarray,
               args: argparse.Namespace) -> dict:
    """Floor, cached and decode timings of one architecture (medians of interleaved repeats)."""
    import torch

    from skin_core.models.registry import create_model, preprocess_config
    from skin_core.training.augment import augment_batch
    from skin_core.training.engine import load_batch

    torch.manual_seed(0)
    model = create_model(arch, num_classes=7, input_size=args.size).train()
    cl = not args.no_channels_last
    if cl:
        model = model.to(memory_format=torch.channels_last)
    fmt = torch.channels_last if cl else torch.contiguous_format
    pre = preprocess_config(arch, args.size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def step(x, y):  # noqa: ANN001, ANN202
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    x_mem, y_mem = load_batch(arr, np.arange(args.batch), labels[:args.batch],
                              device="cpu", mean=pre.mean, std=pre.std,
                              generator=gen, augment=False, channels_last=cl)
    step(x_mem, y_mem)  # warm-up (allocations, oneDNN kernels)

    def floor_batch() -> float:
        t = time.perf_counter()
        step(x_mem, y_mem)
        return time.perf_counter() - t

    def cached_batch() -> tuple[float, float]:
        rows = rng.choice(args.n, args.batch, replace=False)
        t = time.perf_counter()
        x, y = load_batch(arr, rows, labels[rows], device="cpu", mean=pre.mean, std=pre.std,
                          generator=gen, augment=True, channels_last=cl)
        t_load = time.perf_counter() - t
        step(x, y)
        return time.perf_counter() - t, t_load

    def epoch(decode: bool) -> float:
        order = rng.permutation(args.n)
        t = time.perf_counter()
        for i in range(0, args.n, args.batch):
            rows = order[i:i + args.batch]
            if decode:
                xb = decode_batch([paths[r] for r in rows], args.size)
                x = augment_batch(xb, mean=pre.mean, std=pre.std, generator=gen).contiguous(
                    memory_format=fmt)
                y = torch.from_numpy(labels[rows])
            else:
                x, y = load_batch(arr, rows, labels[rows], device="cpu", mean=pre.mean,
                                  std=pre.std, generator=gen, channels_last=cl)
            step(x, y)
        return time.perf_counter() - t

    # Paired, alternating order: each pair's ratio cancels the machine's slow drift in load.
    floor_t, cached_t, load_t, pair_ratio = [], [], [], []
    for r in range(args.repeats * args.batches):
        if r % 2 == 0:
            f = floor_batch()
            c, ld = cached_batch()
        else:
            c, ld = cached_batch()
            f = floor_batch()
        floor_t.append(f / args.batch)
        cached_t.append(c / args.batch)
        load_t.append(ld / args.batch)
        pair_ratio.append(f / c)
    ep_cached, ep_decode, ep_ratio = [], [], []
    for r in range(args.epoch_repeats):
        if r % 2 == 0:
            ec, ed = epoch(False), epoch(True)
        else:
            ed = epoch(True)
            ec = epoch(False)
        ep_cached.append(ec)
        ep_decode.append(ed)
        ep_ratio.append(ed / ec)
    f, c = statistics.median(floor_t), statistics.median(cached_t)
    ld = statistics.median(load_t)
    ec, ed = statistics.median(ep_cached), statistics.median(ep_decode)
    out = {
        "floor_img_s": 1 / f, "cached_img_s": 1 / c,
        "load_augment_ms_per_img": 1000 * ld,
        "cached_vs_floor": statistics.median(pair_ratio),
        "cached_vs_floor_from_parts": f / (f + ld),
        "decode_img_s": args.n / ed, "cached_epoch_img_s": args.n / ec,
        "cached_epoch_speedup_vs_decode": statistics.median(ep_ratio),
        "cached_epoch_s": ec, "decode_epoch_s": ed,
    }
    print(f"{arch}: floor {1 / f:.1f} img/s, cached {1 / c:.1f} img/s, cached/floor "
          f"{out['cached_vs_floor']:.2f} (paired median; from parts "
          f"{out['cached_vs_floor_from_parts']:.2f}); epoch cached {ec:.1f}s vs decode "
          f"{ed:.1f}s (x{out['cached_epoch_speedup_vs_decode']:.2f})", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+",
                    default=["mobilenetv3_small_050", "resnet10t", "mobilenetv2_100"])
    ap.add_argument("--n", type=int, default=128, help="images (epoch size)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, default=3,
                    help="floor/cached batch pairs per repeat")
    ap.add_argument("--epoch-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-channels-last", action="store_true",
                    help="NCHW model and batches (default: channels-last, as the trainer)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)

    import torch

    from skin_core.data.cache import build_image_cache

    torch.set_num_threads(args.threads)
    results: dict = {"config": vars(args), "archs": {}, "torch": torch.__version__,
                     "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp) / "jpeg", args.n)
        ids = [Path(p).stem for p in paths]
        t0 = time.perf_counter()
        cache = build_image_cache(ids, paths, args.size, cache_dir=Path(tmp) / "cache",
                                  workers=args.threads)
        results["cache_build_s"] = time.perf_counter() - t0
        labels = np.arange(args.n) % 7
        for arch in args.archs:
            results["archs"][arch] = bench_arch(arch, cache.array, paths, labels, args)
    print(f"\nimage cache: {args.n} images at {args.size}px built in "
          f"{results['cache_build_s']:.1f}s\n")
    print("| arch | floor img/s | cached img/s | load+augment ms/img | cached / floor (paired) | "
          "cached / floor (from parts) | cached epoch img/s | decode epoch img/s | "
          "cached epoch speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for arch, r in results["archs"].items():
        print(f"| {arch} | {r['floor_img_s']:.1f} | {r['cached_img_s']:.1f} | "
              f"{r['load_augment_ms_per_img']:.2f} | {r['cached_vs_floor']:.2f} | "
              f"{r['cached_vs_floor_from_parts']:.2f} | {r['cached_epoch_img_s']:.1f} | "
              f"{r['decode_img_s']:.1f} | {r['cached_epoch_speedup_vs_decode']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
