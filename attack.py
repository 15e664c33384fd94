"""Reconstruct private inputs from split-inference features: ``python attack.py --config configs/pfo_resnet.yaml``."""

from pfo.attacks.cli import AttackCLI


def cli_main(args: list[str] | None = None) -> AttackCLI:
    return AttackCLI(args=args)


if __name__ == "__main__":
    cli_main()
