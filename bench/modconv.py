"""Time the modulated-convolution formulations (``grouped`` vs ``scaled``) to choose ``modconv="auto"``.

Forward + backward of one synthesis layer at 32 px (plain 3x3 and the upsampling one), at batch 1 and 32, and
of the whole 32-px generator of our CPU prior (channel_base=1024, channel_max=128). "train" differentiates
the weights too (prior training); "attack" only the styles (the generator frozen, as in PFO). Run manually:

    OMP_NUM_THREADS=1 python bench/modconv.py [--threads 1] [--reps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from pfo.models.stylegan2 import Generator, SynthesisLayer
from pfo.models.stylegan2_ops import MODCONV_IMPLS


def _time(fn: Callable[[], None], reps: int, device: torch.device) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs after two warm-up runs."""
    times = []
    for i in range(reps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_layer(impl: str, batch: int, up: int, mode: str, w_dim: int, reps: int, device: torch.device) -> float:
    """One synthesis layer producing 32x32 with 32 channels (64 input channels when it upsamples)."""
    torch.manual_seed(0)
    in_ch = 64 if up == 2 else 32
    layer = SynthesisLayer(in_ch, 32, w_dim=w_dim, resolution=32, up=up, modconv=impl).to(device)
    layer.requires_grad_(mode == "train")
    x = torch.randn(batch, in_ch, 32 // up, 32 // up, device=device, requires_grad=True)
    w = torch.randn(batch, w_dim, device=device, requires_grad=True)

    def step() -> None:
        layer(x, w, noise_mode="const").square().sum().backward()

    return _time(step, reps, device)


def bench_generator(impl: str, batch: int, mode: str, w_dim: int, reps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    G = Generator(
        z_dim=w_dim, w_dim=w_dim, resolution=32, channel_base=1024, channel_max=128, n_mlp=2, modconv=impl
    ).to(device)
    G.train(mode == "train").requires_grad_(mode == "train")
    ws = torch.randn(batch, G.num_ws, w_dim, device=device, requires_grad=True)

    def step() -> None:
        G.synthesis(ws, noise_mode="const").square().sum().backward()

    return _time(step, reps, device)


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per case (median reported)")
    p.add_argument("--w-dim", type=int, default=128)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--device", default="cpu")
    a = p.parse_args(args)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, median of {a.reps}")
    print(f"{'case':<34}{'batch':>6}" + "".join(f"{impl:>12}" for impl in MODCONV_IMPLS) + "   (ms, fwd+bwd)")
    for mode in ("train", "attack"):
        for batch in a.batches:
            for up in (1, 2):
                ms = [bench_layer(i, batch, up, mode, a.w_dim, a.reps, device) for i in MODCONV_IMPLS]
                name = f"layer 32px {'up ' if up == 2 else ''}{mode}"
                print(f"{name:<34}{batch:>6}" + "".join(f"{t:>12.2f}" for t in ms), flush=True)
            ms = [bench_generator(i, batch, mode, a.w_dim, a.reps, device) for i in MODCONV_IMPLS]
            print(f"{'generator 32px ' + mode:<34}{batch:>6}" + "".join(f"{t:>12.2f}" for t in ms), flush=True)


if __name__ == "__main__":
    main()
