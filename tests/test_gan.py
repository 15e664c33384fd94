"""Stage 2, the prior: GAN training through ``train.cli_main`` on generated data (tiny networks, every output under
``tmp_path``), resume, fine-tuning from pfo and rosinality files, the generator file, DiffAugment, and a short run
that must measurably learn a trivial data set."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import yaml
from stylegan_checkpoints import (  # tests/ is on sys.path under pytest's default import mode
    save_nvlabs_pkl,
    save_rosinality,
)
from torch.utils.data import DataLoader

import train
from pfo.artifacts import ArtifactError, save_artifact
from pfo.models import (
    Discriminator,
    Generator,
    load_discriminator_from_file,
    load_generator,
    load_prior,
    save_generator,
)
from pfo.models.generator_file import load_prior_networks
from pfo.prior import DiffAugment, GANSystem
from pfo.prior.augment import cutout, parse_policy, translation
from pfo.prior.losses import ema_beta, update_ema

REPO = Path(__file__).resolve().parents[1]
GAN_CONFIGS = sorted((REPO / "configs").glob("gan_*.yaml"))
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY_G = dict(z_dim=16, w_dim=16, resolution=16, n_mlp=2, channel_base=1024, channel_max=16)
TINY_D = dict(resolution=16, channel_base=1024, channel_max=16)
BATCH = 8

# Lightning warns at each step-based checkpoint of a manually optimised module; pfo.prior.system filters it at
# import, but pytest resets warning filters per test.
pytestmark = pytest.mark.filterwarnings("ignore:Using ModelCheckpoint with manual optimization")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks gain nothing from intra-op threads and lose much when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_overrides(root: Path, steps: int, every: int = 2, batch: int = BATCH) -> list[str]:
    """Command-line overrides that shrink any configs/gan_*.yaml to 16 px networks on synthetic images."""
    args = ["--data", "pfo.data.SyntheticImages"]
    data = dict(resolution=16, train_split="public", val_split="null", batch_size=batch, num_workers=0, cache="true")
    args += [f"--data.init_args.{k}={v}" for k, v in data.items()]
    args += [f"--model.init_args.generator.init_args.{k}={v}" for k, v in TINY_G.items()]
    args += [f"--model.init_args.discriminator.init_args.{k}={v}" for k, v in TINY_D.items()]
    model = dict(sample_every_n_steps=every, sample_grid=2, export_every_n_steps="null")
    args += [f"--model.init_args.{k}={v}" for k, v in model.items()]
    args += [
        f"--trainer.max_steps={steps}",
        f"--trainer.logger.init_args.save_dir={root}",
        f"--trainer.callbacks.init_args.every_n_train_steps={every}",
        "--trainer.log_every_n_steps=1",
    ]
    return args + QUIET


def fit(root: Path, *extra: str, steps: int = 4, config: str = "gan_cifar10.yaml"):
    return train.cli_main(["fit", "--config", str(REPO / "configs" / config), *tiny_overrides(root, steps), *extra])


def same_module(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def from_checkpoint(ckpt: dict, prefix: str, cls: type, config: dict) -> torch.nn.Module:
    net = cls(**config)
    net.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    return net.eval()


@pytest.fixture
def capture_train_start(monkeypatch) -> list[dict]:
    """Records, when each fit starts training (after any resume or init_from), the system's state."""
    records: list[dict] = []
    original = GANSystem.on_train_start

    def on_train_start(self):
        g_opt, d_opt = self.optimizers()
        records.append(
            {
                "global_step": self.global_step,
                "images_seen": self.images_seen,
                "G": {k: v.clone() for k, v in self.G.state_dict().items()},
                "G_ema": {k: v.clone() for k, v in self.G_ema.state_dict().items()},
                "D": {k: v.clone() for k, v in self.D.state_dict().items()},
                "adam_steps": [{int(s["step"]) for s in opt.optimizer.state.values()} for opt in (g_opt, d_opt)],
            }
        )
        original(self)

    monkeypatch.setattr(GANSystem, "on_train_start", on_train_start)
    return records


# --- the entry point end to end ---------------------------------------------------------------------------------


def test_fit_writes_run_folder_and_a_prior_that_loads_back(isolated, plain_argv):
    cli = fit(isolated / "logs")
    run = isolated / "logs" / "gan_cifar10"
    assert cli.trainer.global_step == 4  # training steps (batches), not optimiser steps: the D update is not counted
    assert cli.model.images_seen == 4 * BATCH
    assert (run / "config.yaml").is_file() and (run / "run_info.json").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "epoch=0-step=4.ckpt").is_file()  # every_n_train_steps counted in steps
    assert {p.name for p in (run / "samples").glob("*.png")} == {f"step_{s:06d}.png" for s in (0, 2, 4)}
    assert list(run.glob("events.out.tfevents.*"))

    G = load_prior(run / "generator.pt")
    assert not G.training
    assert G.meta["kimg"] == pytest.approx(4 * BATCH / 1000) and G.meta["step"] == 4
    assert G.meta["dataset"] == "SyntheticImages" and G.meta["split"] == "public" and G.meta["resolution"] == 16
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    G_ema = from_checkpoint(ckpt, "G_ema.", Generator, TINY_G)
    z = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.equal(G(z, noise_mode="const"), G_ema(z, noise_mode="const"))
    assert same_module(
        load_discriminator_from_file(run / "generator.pt"), from_checkpoint(ckpt, "D.", Discriminator, TINY_D)
    )
    assert not same_module(G_ema, from_checkpoint(ckpt, "G.", Generator, TINY_G))  # the EMA lags G


def test_resume_continues_steps_optimisers_and_ema(isolated, plain_argv, capture_train_start):
    fit(isolated / "logs", steps=4)
    ckpt = torch.load(isolated / "logs" / "gan_cifar10" / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = fit(isolated / "logs", steps=6)  # the config's ckpt_path: last
    first, second = capture_train_start
    assert first["global_step"] == 0 and second["global_step"] == 4
    assert second["images_seen"] == 4 * BATCH
    assert second["adam_steps"] == [{4}, {4}]  # both optimisers' states came back, one update per step each
    for name in ("G", "G_ema", "D"):
        saved = {k[len(name) + 1 :]: v for k, v in ckpt["state_dict"].items() if k.startswith(name + ".")}
        assert saved.keys() == second[name].keys()
        assert all(torch.equal(saved[k], second[name][k]) for k in saved), name
    assert resumed.trainer.global_step == 6 and resumed.model.images_seen == 6 * BATCH
    assert (isolated / "logs" / "gan_cifar10" / "samples" / "step_000006.png").is_file()


@pytest.mark.parametrize("fmt", ["pfo", "rosinality"])
def test_fine_tuning_starts_from_the_file(isolated, plain_argv, capture_train_start, fmt):
    torch.manual_seed(123)  # not the CLI's seed: the file's weights differ from a fresh initialisation
    G, D = Generator(**TINY_G), Discriminator(**TINY_D)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    path = isolated / ("prior.pt" if fmt == "pfo" else "rosinality.pt")
    if fmt == "pfo":
        save_generator(G, path, discriminator=D)
    else:
        save_rosinality(path, G, D)
    cli = fit(isolated / "logs", f"--model.init_args.init_from={path}", steps=2)
    start = capture_train_start[0]
    file_G = load_prior(path)
    for name in ("G", "G_ema"):
        assert start[name].keys() == file_G.state_dict().keys()
        assert all(torch.equal(start[name][k], v) for k, v in file_G.state_dict().items()), name
    assert all(torch.equal(start["D"][k], v) for k, v in D.state_dict().items())
    trained = cli.model.G.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in file_G.state_dict().items())
    assert load_generator(isolated / "logs" / "gan_cifar10" / "generator.pt").meta["init_from"] == str(path)
    if fmt == "pfo":  # a resumed run restores its checkpoint and never reads init_from again
        path.unlink()
        fit(isolated / "logs", f"--model.init_args.init_from={path}", steps=3)
        assert all(torch.equal(capture_train_start[1]["G"][k], v) for k, v in trained.items())


def test_init_from_a_different_architecture_names_the_fix(tmp_path):
    save_generator(Generator(**{**TINY_G, "w_dim": 32}), tmp_path / "wide.pt")
    system = GANSystem(Generator(**TINY_G), Discriminator(**TINY_D))
    with pytest.raises(ValueError, match=r"set `model.init_args.generator.init_args` to the file's architecture"):
        system.initialise_from(tmp_path / "wide.pt")


@pytest.mark.parametrize("config", GAN_CONFIGS, ids=lambda p: p.stem)
def test_gan_configs_parse(config, capsys, isolated, plain_argv):
    with pytest.raises(SystemExit) as exit_:
        train.cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "pfo.prior.GANSystem"
    assert printed["ckpt_path"] == "last"
    assert printed["trainer"]["logger"]["init_args"]["version"] == ""
    assert printed["data"]["init_args"]["augment"] is False  # augmenting reals only would leak into G
    resolution = printed["data"]["init_args"]["resolution"]
    for net in ("generator", "discriminator"):
        assert printed["model"]["init_args"][net]["init_args"]["resolution"] == resolution


def test_the_known_gan_configs_are_there():
    assert {p.stem for p in GAN_CONFIGS} >= {"gan_cifar10", "gan_tinyimagenet", "gan_lfw", "gan_ffhq"}


def test_ffhq_config_runs_a_step_at_tiny_size(isolated, plain_argv):
    """The GPU config (its DDP strategy in one CPU process, float32) with the networks and data shrunk."""
    try:
        cli = fit(
            isolated / "logs",
            "--trainer.accelerator=cpu",
            "--trainer.precision=32-true",
            "--model.init_args.pl_interval=1",  # exercise the path-length penalty in the one step
            config="gan_ffhq.yaml",
            steps=1,
        )
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    assert cli.trainer.global_step == 1
    assert float(cli.model.pl_mean) > 0
    run = isolated / "logs" / "gan_ffhq"
    assert (run / "generator.pt").is_file() and (run / "samples" / "step_000001.png").is_file()


# --- learning something --------------------------------------------------------------------------------------------

COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.2, 1.0], [1.0, 0.9, 0.1]])


def distance_to_nearest_colour(images: torch.Tensor) -> float:
    """Mean over images of the RMS distance (in [0, 1] units) to the closest solid colour of the data set."""
    d = (images[:, None] - COLOURS[None, :, :, None, None]).square().mean(dim=[2, 3, 4]).sqrt()
    return d.min(dim=1).values.mean().item()


def test_short_training_moves_samples_towards_the_data():
    """Four solid colours at 8 px: 200 steps bring G_ema's samples from grey noise clearly closer to them."""
    L.seed_everything(0)
    res = 8
    images = COLOURS[:, :, None, None].expand(-1, -1, res, res).repeat(16, 1, 1, 1)
    loader = DataLoader([{"image": im} for im in images], batch_size=16, shuffle=True, drop_last=True)
    G = Generator(z_dim=16, w_dim=16, resolution=res, n_mlp=2, channel_base=512, channel_max=16)
    D = Discriminator(resolution=res, channel_base=512, channel_max=16)

    def adam(params):
        return torch.optim.Adam(params, lr=0.01, betas=(0.0, 0.99))

    system = GANSystem(
        G, D, g_optimizer=adam, d_optimizer=adam, r1_gamma=0.01, style_mixing_prob=0.0, ema_kimg=0.5,
        sample_every_n_steps=None, export=None,
        allow_nonpublic_training=True,  # a plain loader of toy colours names no split
    )  # fmt: skip
    z = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    before = distance_to_nearest_colour(system.sample(z))
    trainer = L.Trainer(
        max_steps=200, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(system, loader)
    after = distance_to_nearest_colour(system.sample(z))
    assert before > 0.3  # the untrained generator renders near-grey noise, far from every colour
    assert after < 0.6 * before, (before, after)


# --- the generator file ----------------------------------------------------------------------------------------


def test_generator_file_round_trip(tmp_path):
    torch.manual_seed(1)
    G, D = Generator(**TINY_G), Discriminator(**TINY_D)
    path = save_generator(G, tmp_path / "g.pt", discriminator=D, kimg=1.5)
    G2 = load_generator(path)
    assert same_module(G, G2) and G2.config == G.config and not G2.training
    assert G2.meta["kimg"] == 1.5 and G2.meta["has_discriminator"] and "state_dict" not in str(G2.meta)
    assert all(p.requires_grad for p in G2.parameters())  # documented: the loader leaves that to the caller
    assert same_module(D, load_discriminator_from_file(path))
    save_generator(G, tmp_path / "alone.pt")
    with pytest.raises(ArtifactError, match="holds no discriminator"):
        load_discriminator_from_file(tmp_path / "alone.pt")
    nets = load_prior_networks(path)
    assert same_module(nets.G_ema, G) and nets.G is None and same_module(nets.D, D)


def test_load_prior_reads_rosinality_and_nvlabs_files(tmp_path):
    torch.manual_seed(2)
    G, D = Generator(**TINY_G), Discriminator(**TINY_D)
    save_rosinality(tmp_path / "r.pt", G, D, training=True)
    assert same_module(load_prior(tmp_path / "r.pt"), G)
    nets = load_prior_networks(tmp_path / "r.pt")
    trained, ours = nets.G.state_dict(), G.state_dict()
    # rosinality keeps latent_avg for g_ema only; the importer estimates g's w_avg by sampling
    assert all(torch.equal(trained[k], v) for k, v in ours.items() if k != "mapping.w_avg")
    assert same_module(nets.D, D)
    save_nvlabs_pkl(tmp_path / "n.pkl", G, D)
    nets = load_prior_networks(tmp_path / "n.pkl")
    assert same_module(load_prior(tmp_path / "n.pkl"), G) and same_module(nets.G, G) and same_module(nets.D, D)


def test_load_prior_on_foreign_files_raises_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a network")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6"}, tmp_path / "last.ckpt")
    save_artifact(tmp_path / "victim.pt", "victim", {"class_path": "x.Y", "init_args": {}}, {})
    expected = {
        "notes.txt": "neither a torch file nor a readable NVlabs pickle",
        "other.pt": r"a torch file holding \['weights'\]",
        "last.ckpt": "a Lightning checkpoint",
        "victim.pt": "a pfo victim file",
    }
    for name, what in expected.items():
        with pytest.raises(ArtifactError, match=what) as error:
            load_prior(tmp_path / name)
        assert "pfo generator file" in str(error.value) and "rosinality" in str(error.value), name
    with pytest.raises(FileNotFoundError):
        load_prior(tmp_path / "missing.pt")


# --- DiffAugment, EMA ----------------------------------------------------------------------------------------


def test_diffaugment_policy_and_gradients():
    assert parse_policy("color,translation,cutout") == ("brightness", "saturation", "contrast", "translation", "cutout")
    assert parse_policy(None) == () and parse_policy("") == ()
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        DiffAugment("color,flip")
    x = torch.rand(6, 3, 16, 16, requires_grad=True)
    assert DiffAugment(None)(x) is x
    y = DiffAugment("color,translation,cutout")(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not torch.equal(DiffAugment("color")(x), DiffAugment("color")(x))  # fresh randomness per call


def test_translation_shifts_whole_images_and_cutout_zeros_squares():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 6:10, 6:10] = 1.0  # a centred square survives any shift of up to 2 px
    y = translation(x, ratio=0.125)
    assert torch.equal(y.sum(dim=[1, 2, 3]), x.sum(dim=[1, 2, 3]))
    shifts = {tuple((img[0] > 0).nonzero()[0].tolist()) for img in y}
    assert len(shifts) > 5 and all(4 <= r <= 8 and 4 <= c <= 8 for r, c in shifts)
    z = cutout(torch.ones(256, 3, 16, 16), ratio=0.5)
    zeroed = (z[:, 0] == 0).float().mean(dim=[1, 2])
    assert zeroed.max() == pytest.approx(0.25) and zeroed.min() > 0  # an 8x8 square, clipped at the borders
    assert torch.equal(z[:, 0], z[:, 1])  # the same square in every channel


def test_ema_half_life_and_update():
    assert ema_beta(32, images_seen=0, ema_kimg=10, ema_rampup=0.05) == 0.0  # starts as a copy of G
    assert ema_beta(32, images_seen=10**9, ema_kimg=10, ema_rampup=0.05) == pytest.approx(0.5 ** (32 / 10_000))
    assert ema_beta(32, images_seen=1000, ema_kimg=10, ema_rampup=0.05) == pytest.approx(0.5 ** (32 / 50))
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.9 * a.weight.detach() + 0.1 * b.weight.detach()
    update_ema(a, b, beta=0.9)
    assert torch.allclose(a.weight, expected)
