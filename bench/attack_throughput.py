"""Batched attack vs the same targets one at a time, side by side in one run, plus a profile of the batched run.

    python bench/attack_throughput.py --targets 32 --steps 100 [--victim V.pt --generator G.pt] [--device cuda]

Without files it uses randomly initialised networks of the CIFAR-10 setting (ResNet-18 CIFAR stem split at
layer2, the 32-px prior of configs/gan_cifar10.yaml): throughput does not depend on the weights. The two runs use
the same targets and the same number of steps; the ratio is images/s batched over images/s one at a time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile

from pfo.attacks import PFO
from pfo.models import ResNet, load_victim
from pfo.models.stylegan2 import Generator


def build(args) -> PFO:
    if args.victim:
        victim = load_victim(args.victim, args.split_point)
    else:
        victim = ResNet(depth=18, num_classes=10, stem="cifar", input_size=32, split_point=args.split_point)
    if args.generator:
        generator = args.generator
    else:
        config = yaml.safe_load(Path("configs/gan_cifar10.yaml").read_text())
        generator = Generator(**config["model"]["init_args"]["generator"]["init_args"])
    stages = 4
    steps = [args.steps // 2] + [args.steps // (2 * (stages - 1))] * (stages - 1)
    attack = PFO(victim=victim, generator=generator, steps=steps, n_init=args.n_init, progress=False)
    attack.train()
    return attack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100, help="total optimisation steps per target")
    parser.add_argument("--n_init", type=int, default=16)
    parser.add_argument("--split_point", default="layer2")
    parser.add_argument("--victim")
    parser.add_argument("--generator")
    parser.add_argument("--profile_steps", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K")
    parser.add_argument("--batched_only", action="store_true", help="skip the one-at-a-time run")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    attack = build(args).to(device)
    images = torch.rand(args.targets, 3, attack.victim.input_size, attack.victim.input_size, device=device)
    index = torch.arange(args.targets)
    h = attack.client_features(images, index)
    print(
        f"PFO steps per stage {attack.steps}, n_init {args.n_init}, {args.targets} targets, "
        f"{torch.get_num_threads()} threads, device {device}"
    )

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    attack.reconstruct(h[:1], index[:1])  # warm-up: lazy initialisation, kernel selection
    synchronize()
    start = time.perf_counter()
    attack.reconstruct(h, index)
    synchronize()
    batched = time.perf_counter() - start
    print(f"batched ({args.targets} at once): {batched:8.1f} s  {args.targets / batched:7.2f} images/s")
    if args.batched_only:
        return
    start = time.perf_counter()
    for i in range(args.targets):
        attack.reconstruct(h[i : i + 1], index[i : i + 1])
    synchronize()
    single = time.perf_counter() - start
    print(f"one at a time:        {single:8.1f} s  {args.targets / single:7.2f} images/s")
    print(f"speed-up: {single / batched:.2f}x")

    if args.profile_steps:
        attack.steps = [args.profile_steps // 2, args.profile_steps // 2]
        attack.hparams.n_init = 1
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            attack.reconstruct(h, index)
        print(f"\nprofile of the batched run ({args.profile_steps} steps, stage 0 and stage 1):")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=40))


if __name__ == "__main__":
    main()
