"""Pre-training speed: our GVSL training step against the authors' implementation.

Prints one table: samples/s, seconds per step (wall clock, and the process's CPU time over all
threads, which stays meaningful on a shared machine), peak GPU memory, FLOPs per sample and MFU (model
FLOP utilization: achieved FLOP/s over the device's dense peak for the precision used) for

- ours: GVSLNet + NCC/smoothness/restoration losses + Adam, exactly ``pretrain.training_step``
  plus the per-step baseline losses the training loop logs; bf16 autocast on CUDA (and fp32 at
  batch 1 for a like-for-like row), optionally channels-last-3d and torch.compile;
- theirs: the ``GVSL`` class and losses of the authors' code (He et al., CVPR 2023), imported at
  run time from a local checkout given with ``--authors-repo`` (never copied here); fp32, batch 1
  only (their affine head cannot take more). Their code calls ``.cuda()``; on CPU it is run with
  ``.cuda()`` / ``.to("cuda")`` turned into no-ops, and the row says so;
- the data pipeline: one worker's samples/s of our ``PairPatchDataset`` (patch crop + appearance
  transforms in numpy), i.e. how many DataLoader workers a GPU needs.

Both models are timed on ready-made tensors (model step only); FLOPs are counted once per
configuration with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products; forward + backward).

Usage::

    # GPU (defaults: patch 128^3, batch 1 2 4, width 32)
    python benchmarks/pretrain_speed.py --authors-repo ~/src/GVSL
    # CPU figures (defaults: patch 64^3, widths 32 and 16, batch 1)
    python benchmarks/pretrain_speed.py --device cpu --authors-repo /tmp/GVSL
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from gvslcore.data import PairPatchDataset
from gvslcore.nets import GVSLNet
from gvslcore.pretrain import (
    PretrainConfig,
    baseline_losses,
    make_optimizer,
    training_step,
)
from gvslcore.pretrain import (
    compile_model as pretrain_compile,
)

# Dense (non-sparse) tensor-core peaks in TFLOP/s: (bf16, tf32), NVIDIA datasheets.
PEAKS = {
    "H100 PCIe": (756.0, 378.0),
    "H100 NVL": (835.0, 417.5),
    "H100": (989.4, 494.7),  # SXM
    "H200 NVL": (835.0, 417.5),
    "H200": (989.4, 494.7),  # SXM
    "A100": (312.0, 156.0),
    "L40S": (362.0, 181.0),
}


@dataclass
class Row:
    impl: str
    width: int
    batch: int
    precision: str
    options: str = ""
    s_per_step: float = math.nan
    cpu_s_per_step: float = math.nan  # process CPU time (all threads): robust to a busy machine
    samples_per_s: float = math.nan
    peak_mem_gib: float = math.nan
    gflop_per_sample: float = math.nan
    tflops: float = math.nan
    mfu: float = math.nan
    note: str = ""


# -- the authors' code -------------------------------------------------------------------------
@contextlib.contextmanager
def cuda_calls_on_cpu() -> Iterator[None]:
    """Turn ``Tensor.cuda()`` and ``Tensor.to("cuda")`` into no-ops (the authors' code hard-codes
    them); only for running their model on CPU, restored on exit."""
    original_cuda, original_to = torch.Tensor.cuda, torch.Tensor.to

    def no_cuda(self, *args, **kwargs):
        return self

    def to_cpu(self, *args, **kwargs):
        if args and isinstance(args[0], (str, torch.device)) and str(args[0]).startswith("cuda"):
            args = ("cpu", *args[1:])
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return original_to(self, *args, **kwargs)

    torch.Tensor.cuda, torch.Tensor.to = no_cuda, to_cpu
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.to = original_cuda, original_to


def import_authors(repo: Path):
    """(GVSL class, losses module) from a checkout of github.com/YutingHe-list/GVSL."""
    root = repo.expanduser().resolve() / "PyTorch"
    for rel in ("models/gvsl.py", "utils/STN.py", "utils/losses.py"):
        if not (root / rel).is_file():
            raise SystemExit(f"--authors-repo {repo}: {root / rel} not found; give a checkout of the authors' GVSL repository")
    sys.path.insert(0, str(root))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gvsl = importlib.import_module("models.gvsl")
            losses = importlib.import_module("utils.losses")
    finally:
        sys.path.remove(str(root))
    return gvsl.GVSL, losses


def authors_step(GVSL, losses, patch, device: torch.device) -> Callable[[], None]:
    """Their ``Trainer.train_iterator``: forward, NCC + MSE + gradient loss, backward, Adam."""
    net = GVSL().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    fixed, view, moving = (torch.rand(1, 1, *patch, device=device) for _ in range(3))
    net.train()

    def step() -> None:
        res_a, warp_ba, _, flow_ba = net(view, moving)
        loss = losses.ncc_loss(warp_ba, fixed) + losses.MSE(res_a, fixed) + losses.gradient_loss(flow_ba)
        loss.backward()
        opt.step()
        net.zero_grad()
        opt.zero_grad()

    return step


# -- ours --------------------------------------------------------------------------------------
def our_step(width: int, batch: int, patch, device: torch.device, bf16: bool, channels_last: bool,
             compile_model: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    """(compiled-or-eager step, eager step for FLOP counting) of the training loop's work."""
    cfg = PretrainConfig(data=[], out="", width=width, patch=tuple(patch), batch=batch, bf16=bf16)
    net = GVSLNet(width).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    opt = make_optimizer(net, cfg, device)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    fixed, view, moving = (torch.rand(batch, 1, *patch, device=device).contiguous(memory_format=fmt) for _ in range(3))
    model = pretrain_compile(net, device) if compile_model else net
    use_bf16 = bf16 and device.type == "cuda"
    net.train()

    def make(m: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            training_step(m, opt, fixed, view, moving, cfg, use_bf16)
            baseline_losses(fixed, view, moving, cfg.ncc_window)

        return step

    return make(model), make(net)


# -- measuring ---------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(step: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> tuple[float, float, float]:
    """(wall seconds per step, process CPU seconds per step, peak GPU memory GiB or nan)."""
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync(device)
    elapsed, cpu = (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
    return elapsed, cpu, peak


def fill(row: Row, timing: tuple[float, float, float], flops: float, peak_tflops: float | None) -> Row:
    seconds, row.cpu_s_per_step, peak_mem = timing
    row.s_per_step = seconds
    row.samples_per_s = row.batch / seconds
    row.peak_mem_gib = peak_mem
    row.gflop_per_sample = flops / row.batch / 1e9
    row.tflops = flops / seconds / 1e12
    row.mfu = row.tflops / peak_tflops if peak_tflops else math.nan
    return row


def data_pipeline_rate(patch, n: int = 8) -> float:
    """Samples/s of one DataLoader worker: crops from memory-mapped-like arrays + transforms."""
    rng = np.random.default_rng(0)
    shape = tuple(int(p * 1.25) for p in patch)
    volumes = [rng.random(shape, dtype=np.float32) for _ in range(3)]
    dataset = PairPatchDataset(volumes, patch, seed=0)
    dataset[0]
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        dataset[i]
    return n / (time.perf_counter() - t0)


def device_peaks(device: torch.device, args) -> tuple[float | None, float | None, str]:
    """(bf16 peak, fp32 peak) TFLOP/s for MFU and the device's name."""
    if device.type != "cuda":
        name = platform.processor() or platform.machine()
        return args.peak_tflops, args.peak_tflops_fp32 or args.peak_tflops, f"CPU {name}, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(device)
    bf16 = fp32 = None
    for key in sorted(PEAKS, key=len, reverse=True):
        if key in name:
            bf16, tf32 = PEAKS[key]
            fp32 = tf32 if torch.backends.cudnn.allow_tf32 else None
            break
    return args.peak_tflops or bf16, args.peak_tflops_fp32 or fp32, name


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--patch", type=int, default=None, help="cube edge in voxels (default 128 on CUDA, 64 on CPU)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="our batch sizes (default 1 2 4 on CUDA, 1 on CPU)")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="our first-level widths (default 32 on CUDA, 32 16 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10 on CUDA, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 on CUDA, 2 on CPU)")
    p.add_argument("--authors-repo", type=Path, default=None, help="a checkout of the authors' GVSL repository")
    p.add_argument("--channels-last", action="store_true", help="also time ours with channels-last-3d")
    p.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    p.add_argument("--no-fp32", action="store_true", help="skip our fp32 batch-1 row on CUDA")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for bf16 (CUDA) or the CPU, TFLOP/s")
    p.add_argument("--peak-tflops-fp32", type=float, default=None,
                   help="device peak for fp32 rows (default: TF32 tensor-core peak on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)

    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          (args.device if args.device != "auto" else "cpu"))
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    edge = args.patch or (128 if cuda else 64)
    patch = (edge, edge, edge)
    batches = args.batches or ([1, 2, 4] if cuda else [1])
    widths = args.widths or ([32] if cuda else [32, 16])
    steps = args.steps or (10 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 2)
    peak_bf16, peak_fp32, name = device_peaks(device, args)
    torch.manual_seed(0)

    configs: list[tuple[str, int, int, bool, bool, bool]] = []  # impl, width, batch, bf16, channels_last, compile
    for width in widths:
        for batch in batches:
            configs.append(("ours", width, batch, cuda, False, False))
        if cuda and not args.no_fp32:
            configs.append(("ours", width, 1, False, False, False))
        variants = [(True, False)] * args.channels_last + [(False, True)] * args.compile
        for channels_last, compiled in variants:
            configs.append(("ours", width, batches[0], cuda, channels_last, compiled))

    rows: list[Row] = []
    for impl, width, batch, bf16, channels_last, compiled in configs:
        options = ", ".join([o for o, on in (("channels-last", channels_last), ("compile", compiled)) if on])
        row = Row(impl, width, batch, "bf16" if bf16 else "fp32", options)
        if compiled and not cuda:
            row.note = "not run: torch 2.13's CPU compiler fails on this model (pretrain --compile is CUDA only)"
            rows.append(row)
            continue
        try:
            step, eager = our_step(width, batch, patch, device, bf16, channels_last, compiled)
            flops = count_flops(eager)
            fill(row, time_steps(step, device, warmup + (2 if compiled else 0), steps), flops, peak_bf16 if bf16 else peak_fp32)
        except torch.cuda.OutOfMemoryError:
            row.note = "out of memory"
        rows.append(row)
        print(f"  measured {row.impl} w{width} b{batch} {row.precision} {options}: {row.s_per_step:.3f} s/step", file=sys.stderr)
        if cuda:
            torch.cuda.empty_cache()

    if args.authors_repo is not None:
        GVSL, losses = import_authors(args.authors_repo)
        row = Row("authors", 32, 1, "fp32", "")
        guard = contextlib.nullcontext() if cuda else cuda_calls_on_cpu()
        with warnings.catch_warnings(), guard:
            warnings.simplefilter("ignore")
            try:
                step = authors_step(GVSL, losses, patch, device)
                flops = count_flops(step)
                fill(row, time_steps(step, device, warmup, steps), flops, peak_fp32)
            except torch.cuda.OutOfMemoryError:
                row.note = "out of memory"
        if not cuda:
            row.note = "CPU run with their .cuda() calls patched to no-ops"
        rows.append(row)
        print(f"  measured authors w32 b1 fp32: {row.s_per_step:.3f} s/step", file=sys.stderr)
    else:
        rows.append(Row("authors", 32, 1, "fp32", note="not measured: pass --authors-repo PATH"))

    data_rate = data_pipeline_rate(patch)
    print_table(rows, name, patch, steps, warmup, peak_bf16, peak_fp32, data_rate, cuda)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "patch": list(patch), "steps": steps, "rows": [asdict(r) for r in rows],
                                         "data_samples_per_s_per_worker": data_rate}, indent=2, default=str))
    return 0


def _fmt(value: float, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_table(rows, name, patch, steps, warmup, peak_bf16, peak_fp32, data_rate, cuda) -> None:
    print(f"\nGVSL pre-training step, patch {patch[0]}x{patch[1]}x{patch[2]}, {name}, torch {torch.__version__}, "
          f"{steps} timed steps after {warmup} warm-up")
    peaks = f"MFU peaks: bf16 {_fmt(peak_bf16, '.1f')} TFLOP/s, fp32 {_fmt(peak_fp32, '.1f')} TFLOP/s"
    if cuda:
        peaks += f" (TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'})"
    print(peaks + "\n")
    header = ["impl", "width", "batch", "precision", "options", "s/step", "CPU s/step", "samples/s", "peak GiB",
              "GFLOP/sample", "TFLOP/s", "MFU", "note"]
    lines = []
    for r in rows:
        mfu = "n/a" if math.isnan(r.mfu) else f"{100 * r.mfu:.1f}%"
        lines.append([r.impl, str(r.width), str(r.batch), r.precision, r.options or "-", _fmt(r.s_per_step, ".3f"),
                      _fmt(r.cpu_s_per_step, ".3f"),
                      _fmt(r.samples_per_s, ".2f"), _fmt(r.peak_mem_gib, ".2f"), _fmt(r.gflop_per_sample, ".0f"),
                      _fmt(r.tflops, ".2f"), mfu, r.note])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
    print(f"\nData pipeline (one DataLoader worker, patch crop + appearance transforms): {data_rate:.1f} samples/s")
    best = max((r.samples_per_s for r in rows if r.impl == "ours" and not math.isnan(r.samples_per_s)), default=math.nan)
    if not math.isnan(best):
        print(f"workers needed to feed the fastest row of ours: {math.ceil(best / data_rate)}")


if __name__ == "__main__":
    sys.exit(main())
