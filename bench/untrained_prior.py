"""An untrained prior with a trained one's architecture: the "no prior knowledge" ablation of bench/RESULTS.md.

    python bench/untrained_prior.py logs/gan_cifar10/generator.pt bench_cache/untrained_generator.pt
    python bench/benchmark.py --prior cifar10=bench_cache/untrained_generator.pt --attacks pfo glass ...

Fresh weights (seeded), and ``w_avg`` (the truncation centre) set to the mean mapped ``w`` over 10,000 ``z``, as
training would have tracked it, so truncation pulls towards this generator's own centre rather than towards zero.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pfo.models.generator_file import load_generator, save_generator  # noqa: E402
from pfo.models.stylegan2 import Generator  # noqa: E402


def untrained_like(trained: Generator, seed: int = 0, samples: int = 10_000) -> Generator:
    torch.manual_seed(seed)
    fresh = Generator(**trained.config).eval()
    with torch.no_grad():
        fresh.mapping.w_avg.copy_(fresh.mapping(torch.randn(samples, fresh.z_dim)).mean(0))
    return fresh


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generator", type=Path, help="the trained generator file whose architecture to copy")
    parser.add_argument("out", type=Path, help="where to write the untrained generator file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    fresh = untrained_like(load_generator(args.generator), args.seed)
    path = save_generator(fresh, args.out, untrained=True, architecture_of=str(args.generator), seed=args.seed)
    print(f"untrained generator written to {path}")


if __name__ == "__main__":
    main()
