"""The attacks reconstruct images: PSNR against the private original, not only a falling feature loss.

Settings small enough for the suite (the 16-px victim of test_attack, split at ``layer1``):
- PFO and GLASS recover targets the prior can render exactly: images the tiny StyleGAN2 generator itself produced
  from known latents (drawn from a seed no attack uses), its RGB outputs scaled so the renders lie inside [-1, 1]
  (nothing is clamped away, so an exact answer exists);
- rMLE and LM (pixels, a deep image prior) recover synthetic images at the shallow split;
- the inverse network, trained for 40 steps on the public split of a trivial data set (two flat colours split by
  an edge), decodes its test images.

Each test runs the attack through ``training_step`` (client, attack, scoring, the per-target record) and checks the
recorded PSNR against an independent computation from the reconstruction and the original, and against a
threshold measured here and pinned with a margin. The thresholds were checked to fail when the value range, the
loss or the scoring is broken on purpose (the numbers are in each threshold's comment).
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from test_attack import run_steps, tiny_generator, tiny_victim  # tests/ is on sys.path under pytest

from pfo.attacks import GLASS, LM, PFO, RMLE, InverseNetwork, InverseNetworkTrainer
from pfo.data import SyntheticImages
from pfo.data.images import Record

pytestmark = [
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:You are trying to `self.log"),
]

RES = 16
TARGETS = [3, 11]  # two targets: every test also checks that each answer is its own target's


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def independent_psnr(recon: torch.Tensor, original: torch.Tensor) -> float:
    """10 log10(1 / MSE) over one image's pixels, in float64, data range 1."""
    mse = (recon.double() - original.double()).pow(2).mean().item()
    return 10 * math.log10(1 / mse)


def scored(attack, images: torch.Tensor, folder) -> list[float]:
    """Run ``attack`` on ``images`` (targets ``TARGETS``) through ``training_step``; return each target's recorded
    PSNR after checking it against an independent PSNR of the recorded reconstruction and its own original."""
    batch = {
        "image": images,
        "index": torch.tensor(TARGETS),
        "label": torch.zeros(len(TARGETS), dtype=torch.long),
        "valid": torch.ones(len(TARGETS), dtype=torch.bool),
    }
    records = run_steps(attack, [batch], folder)
    recorded, own, other = [], [], []
    for i, (index, original) in enumerate(zip(TARGETS, images)):
        record = records[index]
        assert record["status"] == "ok" and record["reconstruction"].shape == original.shape
        recorded.append(record["metrics"]["psnr"])
        own.append(independent_psnr(record["reconstruction"], original))
        other.append(independent_psnr(record["reconstruction"], images[1 - i]))
    print(f"{type(attack).__name__}: recorded PSNR {recorded}, independent {own}, against the other target {other}")
    assert recorded == pytest.approx(own, abs=1e-3), "the recorded score is not the PSNR against the original"
    assert all(a > b + 3 for a, b in zip(own, other)), "an answer is no closer to its own target than to the other"
    return recorded


def prior(scale: float = 0.35):
    """The tiny 16-px generator of test_attack with its RGB outputs scaled by ``scale``: its renders then lie inside
    [-1, 1], the range the attacks map to the victim's [0, 1]."""
    G = tiny_generator()
    with torch.no_grad():
        for block in G.synthesis.blocks:
            block.torgb.weight.mul_(scale)
            block.torgb.bias.mul_(scale)
    return G


def prior_renders() -> torch.Tensor:
    """Targets the prior can render exactly: images [2, 3, 16, 16] in [0, 1] of known latents."""
    G = prior()
    z = torch.randn(len(TARGETS), G.z_dim, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        images = G.synthesis(G.mapping(z, truncation_psi=0.7), noise_mode="const")
    assert images.abs().max() < 0.95, "the renders must lie inside [-1, 1] to be reachable exactly"
    return (images + 1) / 2


def synthetic_targets() -> torch.Tensor:
    data = SyntheticImages(resolution=RES).dataset("test")
    return torch.stack([data[i]["image"] for i in TARGETS])


# ----- PFO and GLASS: targets the prior renders -------------------------------------------------------------------

# Thresholds, pinned below what was measured (the lower target's PSNR; also with attack seeds 1, 2 and other
# targets): PFO 41.0 dB (40.3-43.9 over seeds), GLASS 41.5 dB (41.5-46.4). Broken on purpose, the lower target's
# PSNR: the generator's [-1, 1] treated as [0, 1]: PFO 27.3, GLASS 17.1; the loss's sign flipped: PFO 6.3, GLASS
# 6.8; the distance taken to the other target's features: PFO 20.0, GLASS 20.0 (and the answers match the other
# target); scored against the other target's image: 19.9 and 20.0 recorded, which also disagrees with the
# independent PSNR.
PFO_PSNR = 35.0
GLASS_PSNR = 34.0


def test_pfo_recovers_an_image_its_prior_renders(tmp_path):
    attack = PFO(tiny_victim(), prior(), steps=[40, 20, 20], n_init=8, init_chunk=8, progress=False)
    psnrs = scored(attack, prior_renders(), tmp_path)
    assert min(psnrs) > PFO_PSNR, psnrs


def test_glass_recovers_an_image_its_prior_renders(tmp_path):
    attack = GLASS(
        tiny_victim(), prior(), n_init=8, init_chunk=8, candidates=2, short_steps=20, steps=60, progress=False
    )
    psnrs = scored(attack, prior_renders(), tmp_path)
    assert min(psnrs) > GLASS_PSNR, psnrs


# ----- rMLE and LM: synthetic images at a shallow split --------------------------------------------------------------

# Measured: rMLE 53.4 dB (53.1-53.9 over seeds), LM 29.0 dB (29.0-37.4). Broken on purpose: pixels in [0, 1] treated
# as [-1, 1]: rMLE 11.8, LM 11.5; the loss's sign flipped: rMLE 4.0, LM 2.7; the other target's features:
# rMLE 17.7, LM 17.9; scored against the other target's image: rMLE 17.7, LM 18.0 recorded.
RMLE_PSNR = 45.0
LM_PSNR = 24.0


def test_rmle_recovers_an_image_at_a_shallow_split(tmp_path):
    attack = RMLE(tiny_victim(), steps=100, lr=0.05, progress=False)
    psnrs = scored(attack, synthetic_targets(), tmp_path)
    assert min(psnrs) > RMLE_PSNR, psnrs


def test_lm_recovers_an_image_at_a_shallow_split(tmp_path):
    attack = LM(tiny_victim(), steps=150, width=16, noise_channels=8, progress=False)
    psnrs = scored(attack, synthetic_targets(), tmp_path)
    assert min(psnrs) > LM_PSNR, psnrs


# ----- the inverse network: trained on the public split, tested on the test split -------------------------------


class TrivialImages(SyntheticImages):
    """A trivial data set: each image two flat colours split by a vertical edge at a random column (colours and
    column seeded per split and index), no noise."""

    def _make(self, split: str, i: int) -> Record:
        g = torch.Generator().manual_seed(1000 * self.split_names.index(split) + i)
        left, right = torch.rand(2, 3, 1, 1, generator=g)
        edge = int(torch.randint(2, self.resolution - 2, (), generator=g))
        image = torch.cat(
            [left.expand(3, self.resolution, edge), right.expand(3, self.resolution, self.resolution - edge)], 2
        )
        return Record(f"{split}/{i:06d}", (image * 255).round().byte().permute(1, 2, 0).numpy(), 0)


# Measured: 18.7 dB (17.6-18.2 the worst of all 16 test images). Broken on purpose: the decoder trained with the
# loss's sign flipped: 2.5; trained towards another image of its batch: 11.2; scored against the other target's image:
# 9.8 recorded. (The value range does not apply: the decoder's sigmoid gives [0, 1] images directly.)
IN_PSNR = 15.0


def test_the_inverse_network_decodes_images_of_a_trivial_data_set(tmp_path):
    data = TrivialImages(resolution=RES, train_split="public", val_split=None, batch_size=16)
    trainer = InverseNetworkTrainer(tiny_victim(), width=16, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    L.Trainer(
        max_steps=40,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    ).fit(trainer, datamodule=data)
    attack = InverseNetwork(tiny_victim(), decoder=str(tmp_path / "decoder.pt"))
    test = data.dataset("test")
    psnrs = scored(attack, torch.stack([test[i]["image"] for i in TARGETS]), tmp_path / "attack")
    assert min(psnrs) > IN_PSNR, psnrs
