"""Train a victim (stage 1) or a prior (stage 2): ``python train.py fit --config configs/<name>.yaml``."""

from pfo.cli import TrainCLI


def cli_main(args: list[str] | None = None) -> TrainCLI:
    return TrainCLI(args=args)


if __name__ == "__main__":
    cli_main()
