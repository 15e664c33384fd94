"""Images per second of the victim's training step in both memory formats, at each progressive-resizing side.

One SGD step (forward, cross-entropy, backward, Nesterov update) of the CIFAR-stem ResNet-18 of
``configs/victim_cifar10_resnet18.yaml`` on fixed random images, contiguous (NCHW) and channels-last (NHWC), timed
alternately in one process so that both formats see the same load. Prints images/s and the channels-last ratio.
Run it manually, not in tests:

    python bench/victim_step.py [--sides 16 24 32] [--batch 128] [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pfo.models import ResNet


def time_steps(side: int, batch: int, steps: int, channels_last: bool) -> float:
    """Seconds per training step, after two warm-up steps."""
    torch.manual_seed(0)
    net = ResNet(depth=18, num_classes=10, stem="cifar", input_size=side)
    images = torch.rand(batch, 3, side, side)
    labels = torch.randint(0, 10, (batch,))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(images), labels).backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[16, 24, 32])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"ResNet-18 (CIFAR stem) training step, batch {args.batch}, {args.steps} timed steps, {args.threads} threads")
    for side in args.sides:
        nchw = time_steps(side, args.batch, args.steps, channels_last=False)
        nhwc = time_steps(side, args.batch, args.steps, channels_last=True)
        print(
            f"{side:3d} px: contiguous {args.batch / nchw:6.1f} images/s, channels-last {args.batch / nhwc:6.1f} "
            f"images/s, ratio {nchw / nhwc:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
