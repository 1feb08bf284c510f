"""Training throughput: image cache vs the pure-compute floor vs decoding JPEGs every epoch.

Side by side in one process; floor and cached batches alternate in pairs (order swapped every
pair) and the reported ratio is the median of the per-pair ratios, likewise for whole epochs,
so slow drifts in machine load cancel (the machine may be shared: only these ratios count):

- **floor**: the same model, batch size and optimiser stepping on a batch already in memory
  as a normalised float tensor (no loading, no augmentation);
- **cached**: the real training path, :func:`skin_core.training.engine.load_batch` (rows from
  the ``uint8`` memmap cache, batched augmentation on tensors) + the same step;
- **decode**: an epoch that decodes every 600x450 JPEG each time (Pillow open, RGB, resize
  the shorter side to S, centre crop, or straight to S x S with ``--resize stretch``; what a
  plain ImageFolder-style loader does in the main process), then the same augmentation and step.

``--freeze N`` (N > 0; EfficientNet-family networks only, see
:mod:`skin_core.training.frozen`) also measures the frozen-stage recipe per architecture: the
stem and first N stages of a random-init model (speed does not depend on the weights) are
frozen, their activations for every image are computed once into a ``float16`` memmap of 2
views (plain + one augmentation; build time reported as images/s over both views), and three
steps rotate in order (forward on even rounds, reversed on odd ones):

- **full floor**: the whole network, trained end to end on an in-memory image batch (the
  floor above, repeated here so its ratio to the frozen floor is paired);
- **frozen floor**: the trainable top only (``forward_suffix`` + loss + backward + AdamW over
  the trainable parameters; frozen stages in eval mode) on an in-memory activation batch;
- **frozen cached**: :func:`skin_core.training.frozen.load_feature_batch` reading the rows
  from the activation file (:class:`~skin_core.training.frozen.FeatureReader`), with
  ``--mixup A`` / ``--cutmix A`` then blended as the trainer blends them
  (:func:`~skin_core.training.regularise.mix_batch`), + the same step (the trainer's path with
  ``freeze: N``); the frozen floor never mixes.

Reported: frozen cached / frozen floor and frozen floor / full floor (the speed-up of
freezing), each the median of per-round ratios.

``--allocator tuned`` (default) calls :func:`skin_core.models.device.tune_cpu_allocator` first,
as the trainer does (the JSON records whether it applied); ``system`` leaves glibc's defaults.
The setting is process-wide and cannot be undone, so ``--compare-allocator`` runs this script
twice as child processes (``system``, then ``tuned``; same other options) and prints one table
with both and the tuned / system ratio of floor images/s. Those two runs are sequential, not
paired: on a loaded machine repeat the comparison before trusting a small difference.

Images: the first ``--n`` real HAM10000 images (``SKIN_CORE_HAM10000_DIR``) upscaled to 600x450
JPEGs (quality 90) in a temporary folder; random images when the variable is unset. The image
cache is built with ``--resize center`` (shorter side, centre crop; the default) or ``stretch``.

Usage::

    .venv/bin/python bench/bench_training.py --archs resnet10t mobilenetv2_100 --size 128 \\
        --batch 32 --repeats 5 --json bench-training.json
    .venv/bin/python bench/bench_training.py --archs mobilenetv2_100 efficientnet_lite0 \\
        --size 160 --resize stretch --freeze 3 --batch 48 --json bench-frozen.json
    .venv/bin/python bench/bench_training.py --archs mobilenetv2_100 --size 160 --freeze 3 \\
        --batch 48 --compare-allocator

Prints a Markdown table (images/s per arch for floor, cached, decode; the two ratios), with
``--freeze`` a second one (full floor, frozen floor, frozen cached, ratios, feature cache build),
with ``--compare-allocator`` one table of both allocators instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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


def decode_batch(paths: list[str], size: int, resize: str = "center"):  # noqa: ANN201
    """Plain decode of full-size JPEGs: open, RGB, resize shorter side, centre crop
    (``resize="stretch"``: straight to ``size x size``). Returns a uint8 NHWC tensor."""
    import torch

    out = np.empty((len(paths), size, size, 3), np.uint8)
    for k, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if resize == "stretch":
                out[k] = np.asarray(im.resize((size, size), Image.BILINEAR))
                continue
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
                xb = decode_batch([paths[r] for r in rows], args.size, args.resize)
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


def bench_frozen(arch: str, cache, labels: np.ndarray,  # noqa: ANN001 - ImageCache
                 args: argparse.Namespace, tmp: Path) -> dict:
    """Full floor vs frozen floor vs frozen cached of one architecture with ``--freeze N``."""
    import torch

    from skin_core.models.registry import create_model, preprocess_config
    from skin_core.training import frozen as fz
    from skin_core.training.engine import load_batch
    from skin_core.training.regularise import mix_batch, mixed_loss

    n, views = args.freeze, 2
    cl = not args.no_channels_last
    pre = preprocess_config(arch, args.size)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def make():  # noqa: ANN202
        torch.manual_seed(0)
        m = create_model(arch, num_classes=7, input_size=args.size).train()
        return m.to(memory_format=torch.channels_last) if cl else m

    full = make()
    full_opt = torch.optim.AdamW(full.parameters(), lr=1e-4)
    model = make()
    fz.check_split(model, n, args.size)
    frozen = fz.freeze_prefix(model, n)
    t0 = time.perf_counter()
    fc = fz.build_feature_cache(model, n, image_cache=cache.array,
                                image_cache_path=str(cache.path), arch=arch, mean=pre.mean,
                                std=pre.std, views=views, seed=0, out_dir=tmp / "features",
                                channels_last=cl)
    build_s = time.perf_counter() - t0
    feats = fc.open()
    fz.set_train_mode(model, frozen)  # after the build, which restores plain train mode
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)

    def full_step(x, y):  # noqa: ANN001, ANN202
        loss = loss_fn(full(x), y)
        full_opt.zero_grad(set_to_none=True)
        loss.backward()
        full_opt.step()

    def frozen_step(x, y, y2=None, lam=1.0):  # noqa: ANN001, ANN202
        loss = mixed_loss(loss_fn, fz.forward_suffix(model, x, n), y, y if y2 is None else y2,
                          lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    first = np.arange(args.batch)
    x_img, y_img = load_batch(cache.array, first, labels[first], device="cpu", mean=pre.mean,
                              std=pre.std, generator=gen, augment=False, channels_last=cl)
    x_feat, y_feat = fz.load_feature_batch(feats, first, labels[first], generator=gen,
                                           augment=False, device="cpu", channels_last=cl)
    full_step(x_img, y_img)  # warm-up (allocations, oneDNN kernels)
    frozen_step(x_feat, y_feat)

    def full_batch() -> tuple[float, float]:
        t = time.perf_counter()
        full_step(x_img, y_img)
        return time.perf_counter() - t, 0.0

    def floor_batch() -> tuple[float, float]:
        t = time.perf_counter()
        frozen_step(x_feat, y_feat)
        return time.perf_counter() - t, 0.0

    def cached_batch() -> tuple[float, float]:
        rows = rng.choice(args.n, args.batch, replace=False)
        t = time.perf_counter()
        x, y = fz.load_feature_batch(feats, rows, labels[rows], generator=gen, augment=True,
                                     device="cpu", channels_last=cl)
        x, y, y2, lam = mix_batch(x, y, mixup=args.mixup, cutmix=args.cutmix, generator=gen)
        t_load = time.perf_counter() - t
        frozen_step(x, y, y2, lam)
        return time.perf_counter() - t, t_load

    # Rounds of three, order reversed every other round; ratios are taken within a round.
    runs = {"full": full_batch, "floor": floor_batch, "cached": cached_batch}
    times: dict[str, list[float]] = {k: [] for k in runs}
    load_t, cached_ratio, speedup = [], [], []
    for r in range(args.repeats * args.batches):
        got = {k: runs[k]() for k in (list(runs) if r % 2 == 0 else list(runs)[::-1])}
        for k, (t, _) in got.items():
            times[k].append(t / args.batch)
        load_t.append(got["cached"][1] / args.batch)
        cached_ratio.append(got["floor"][0] / got["cached"][0])
        speedup.append(got["full"][0] / got["floor"][0])
    full_f, f, c = (statistics.median(times[k]) for k in ("full", "floor", "cached"))
    ld = statistics.median(load_t)
    out = {
        "freeze": n, "views": views, "mixup": args.mixup, "cutmix": args.cutmix,
        "feature_shape": list(fc.shape[2:]),
        "feature_cache_mb": int(np.prod(fc.shape)) * 2 / 1e6,
        "feature_cache_build_s": build_s, "feature_cache_img_s": args.n * views / build_s,
        "trainable_params": sum(p.numel() for p in trainable),
        "total_params": sum(p.numel() for p in model.parameters()),
        "full_floor_img_s": 1 / full_f, "floor_img_s": 1 / f, "cached_img_s": 1 / c,
        "load_ms_per_img": 1000 * ld,
        "cached_vs_floor": statistics.median(cached_ratio),
        "cached_vs_floor_from_parts": f / (f + ld),
        "floor_vs_full_floor": statistics.median(speedup),
    }
    print(f"{arch} freeze {n}: full floor {1 / full_f:.1f} img/s, frozen floor {1 / f:.1f} "
          f"img/s (x{out['floor_vs_full_floor']:.2f}), frozen cached {1 / c:.1f} img/s, "
          f"cached/floor {out['cached_vs_floor']:.2f}; feature cache {out['feature_cache_mb']:.1f}"
          f" MB built at {out['feature_cache_img_s']:.1f} img/s", file=sys.stderr)
    return out


def check_freeze(archs: list[str], n: int, size: int) -> str | None:
    """One sentence when ``--freeze n`` cannot split one of ``archs``, else None."""
    from skin_core.errors import ConfigError
    from skin_core.models.registry import create_model
    from skin_core.training.frozen import prefix_modules

    for arch in archs:
        try:
            prefix_modules(create_model(arch, num_classes=7, input_size=size), n)
        except ConfigError as exc:
            why = str(exc).split(";")[0]  # its advice is for the training config
            return (f"--freeze {n} cannot be used with {arch}: {why}; drop {arch} from "
                    "--archs or pass --freeze 0.")
    return None


def print_tables(results: dict) -> None:
    args = results["config"]
    print(f"\nimage cache: {args['n']} images at {args['size']}px ({args['resize']}) built in "
          f"{results['cache_build_s']:.1f}s; allocator {results['allocator']['mode']} "
          f"(tuned: {results['allocator']['tuned']})\n")
    print("| arch | floor img/s | cached img/s | load+augment ms/img | cached / floor (paired) | "
          "cached / floor (from parts) | cached epoch img/s | decode epoch img/s | "
          "cached epoch speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for arch, r in results["archs"].items():
        print(f"| {arch} | {r['floor_img_s']:.1f} | {r['cached_img_s']:.1f} | "
              f"{r['load_augment_ms_per_img']:.2f} | {r['cached_vs_floor']:.2f} | "
              f"{r['cached_vs_floor_from_parts']:.2f} | {r['cached_epoch_img_s']:.1f} | "
              f"{r['decode_img_s']:.1f} | {r['cached_epoch_speedup_vs_decode']:.2f}x |")
    if not args["freeze"]:
        return
    print(f"\nfrozen stem + {args['freeze']} stages (activations: float16 file read row by row, "
          "2 views)\n")
    print("| arch | full floor img/s | frozen floor img/s | frozen / full floor (paired) | "
          "frozen cached img/s | load ms/img | cached / floor (paired) | cached / floor "
          "(from parts) | trainable params | activations C x H x W | feature cache MB | "
          "feature cache build img/s (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for arch, r in results["archs"].items():
        z = r["frozen"]
        print(f"| {arch} | {z['full_floor_img_s']:.1f} | {z['floor_img_s']:.1f} | "
              f"{z['floor_vs_full_floor']:.2f}x | {z['cached_img_s']:.1f} | "
              f"{z['load_ms_per_img']:.2f} | {z['cached_vs_floor']:.2f} | "
              f"{z['cached_vs_floor_from_parts']:.2f} | "
              f"{z['trainable_params'] / 1e6:.2f}M / {z['total_params'] / 1e6:.2f}M | "
              f"{' x '.join(map(str, z['feature_shape']))} | {z['feature_cache_mb']:.1f} | "
              f"{z['feature_cache_img_s']:.1f} ({z['feature_cache_build_s']:.2f}) |")


def compare_allocators(args: argparse.Namespace) -> int:
    """Run this script as ``--allocator system`` then ``tuned``; one table of both."""
    skip = {"compare_allocator", "allocator", "json"}
    base: list[str] = []
    for key, val in vars(args).items():
        flag = "--" + key.replace("_", "-")
        if key in skip or val is None or val is False:
            continue
        if val is True:
            base.append(flag)
        elif isinstance(val, list):
            base += [flag, *map(str, val)]
        else:
            base += [flag, str(val)]
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("system", "tuned"):
            out = Path(tmp) / f"{mode}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), *base, "--allocator", mode,
                   "--json", str(out)]
            print(f"[{mode}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
            sys.stderr.write(proc.stdout)  # the child's own tables, kept off stdout
            if proc.returncode != 0:
                print(f"bench_training.py: the --allocator {mode} run failed with exit status "
                      f"{proc.returncode} (its output is above); fix that and rerun.",
                      file=sys.stderr)
                return proc.returncode
            runs[mode] = json.loads(out.read_text())
    sys_r, tun_r = runs["system"], runs["tuned"]
    if not tun_r["allocator"]["tuned"]:
        print("warning: tune_cpu_allocator() did not apply in the tuned run (not Linux with "
              "glibc?), so both runs used the system allocator.", file=sys.stderr)
    freeze = bool(args.freeze)
    ratios: dict[str, dict] = {}
    head = ["arch", "floor img/s system", "floor img/s tuned", "tuned / system floor",
            "cached img/s system", "cached img/s tuned", "decode epoch img/s system",
            "decode epoch img/s tuned"]
    if freeze:
        head += ["frozen floor img/s system", "frozen floor img/s tuned",
                 "tuned / system frozen floor", "frozen cached img/s system",
                 "frozen cached img/s tuned", "feature build img/s system",
                 "feature build img/s tuned"]
    print(f"\nallocator comparison: {args.n} images at {args.size}px ({args.resize}), batch "
          f"{args.batch}, {args.threads} threads; two sequential runs (not paired)\n")
    print("| " + " | ".join(head) + " |")
    print("| --- |" + " ---: |" * (len(head) - 1))
    for arch in args.archs:
        s, t = sys_r["archs"][arch], tun_r["archs"][arch]
        ratios[arch] = {"floor": t["floor_img_s"] / s["floor_img_s"],
                        "cached": t["cached_img_s"] / s["cached_img_s"]}
        cells = [arch, f"{s['floor_img_s']:.1f}", f"{t['floor_img_s']:.1f}",
                 f"{ratios[arch]['floor']:.2f}x", f"{s['cached_img_s']:.1f}",
                 f"{t['cached_img_s']:.1f}", f"{s['decode_img_s']:.1f}",
                 f"{t['decode_img_s']:.1f}"]
        if freeze:
            sz, tz = s["frozen"], t["frozen"]
            ratios[arch]["frozen_floor"] = tz["floor_img_s"] / sz["floor_img_s"]
            ratios[arch]["frozen_cached"] = tz["cached_img_s"] / sz["cached_img_s"]
            cells += [f"{sz['floor_img_s']:.1f}", f"{tz['floor_img_s']:.1f}",
                      f"{ratios[arch]['frozen_floor']:.2f}x", f"{sz['cached_img_s']:.1f}",
                      f"{tz['cached_img_s']:.1f}", f"{sz['feature_cache_img_s']:.1f}",
                      f"{tz['feature_cache_img_s']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"config": vars(args), "system": sys_r, "tuned": tun_r, "tuned_vs_system": ratios},
            indent=2) + "\n")
    return 0


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
    ap.add_argument("--resize", choices=["center", "stretch"], default="center",
                    help="image cache (and decode) resize: shorter side + centre crop, or "
                         "straight to S x S")
    ap.add_argument("--freeze", type=int, default=0, metavar="N",
                    help="also bench training with the stem + first N stages frozen "
                         "(EfficientNet-family archs only; 0: off)")
    ap.add_argument("--mixup", type=float, default=0.0,
                    help="with --freeze: mixup Beta parameter in the frozen cached path")
    ap.add_argument("--cutmix", type=float, default=0.0,
                    help="with --freeze: CutMix Beta parameter in the frozen cached path")
    ap.add_argument("--allocator", choices=["tuned", "system"], default="tuned",
                    help="tuned: skin_core.models.device.tune_cpu_allocator() first, as the "
                         "trainer; system: glibc defaults")
    ap.add_argument("--compare-allocator", action="store_true",
                    help="run twice in child processes (--allocator system, then tuned) and "
                         "print one table of both")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.freeze < 0:
        ap.error(f"--freeze must be 0 (off) or a number of stages >= 1; got {args.freeze}.")
    if args.compare_allocator:
        return compare_allocators(args)

    from skin_core.models.device import tune_cpu_allocator

    applied = tune_cpu_allocator() if args.allocator == "tuned" else False

    import torch

    from skin_core.data.cache import build_image_cache
    from skin_core.models import device

    torch.set_num_threads(args.threads)
    if args.freeze and (msg := check_freeze(args.archs, args.freeze, args.size)):
        print(f"bench_training.py: {msg}", file=sys.stderr)
        return 2
    results: dict = {"config": vars(args), "archs": {}, "torch": torch.__version__,
                     "cpu_count": os.cpu_count(),
                     "allocator": {"mode": args.allocator, "applied": applied}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp) / "jpeg", args.n)
        ids = [Path(p).stem for p in paths]
        t0 = time.perf_counter()
        cache = build_image_cache(ids, paths, args.size, cache_dir=Path(tmp) / "cache",
                                  resize=args.resize, workers=args.threads)
        results["cache_build_s"] = time.perf_counter() - t0
        labels = np.arange(args.n) % 7
        for arch in args.archs:
            results["archs"][arch] = bench_arch(arch, cache.array, paths, labels, args)
            if args.freeze:
                results["archs"][arch]["frozen"] = bench_frozen(arch, cache, labels, args,
                                                                Path(tmp))
    # whether the tuned settings were in force for the whole run (nothing else may set them)
    results["allocator"]["tuned"] = bool(getattr(device, "_ALLOCATOR_TUNED", applied))
    print_tables(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
