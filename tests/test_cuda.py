"""The GPU paths: every attack, a defense, the attack CLI and victim training on a CUDA device, checked against the
same work on the CPU. Skipped where no CUDA device is visible (CI, laptops); run them on a GPU machine with

    python -m pytest tests/test_cuda.py -rA

A reconstruction starts from the same per-target draws on either device (they come from CPU generators), so after
a few steps the GPU's images must be close to the CPU's; only floating-point rounding differs.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from test_attack import attack_images, tiny_generator, tiny_victim
from test_attack_cli import TARGETS, attack_config, make_artefacts, read_csv, run_cli

from pfo.attacks import GLASS, LM, PFO, RMLE, GaussianNoise, InverseNetworkTrainer
from pfo.attacks.defenses import defense_generators
from pfo.data import SyntheticImages
from pfo.metrics import psnr

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)"),
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
    pytest.mark.filterwarnings("ignore:.*returned `None`, this fit will run with no optimizer"),
]


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full fp32 on the GPU, so that CPU and GPU differ by rounding alone."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def build(name: str):
    common = {"progress": False}
    if name == "pfo":
        return PFO(tiny_victim(), tiny_generator(), steps=[6, 3, 3], n_init=4, init_chunk=4, **common)
    if name == "glass":
        return GLASS(
            tiny_victim(), tiny_generator(), n_init=4, init_chunk=4, candidates=2, short_steps=4, steps=8, **common
        )
    if name == "rmle":
        return RMLE(tiny_victim(), steps=12, **common)
    return LM(tiny_victim(), steps=12, width=16, noise_channels=8, **common)


@pytest.mark.parametrize("name", ["pfo", "glass", "rmle", "lm"])
def test_an_attack_on_the_gpu_reproduces_the_cpu_reconstruction(name):
    cpu, _ = attack_images(build(name), [0, 5, 10])
    attack = build(name).to("cuda")
    gpu, h = attack_images(attack, [0, 5, 10])
    assert h.device.type == "cuda" and gpu.images.device.type == "cuda"
    assert not gpu.failed.any() and torch.isfinite(gpu.feature_loss).all()
    agreement = psnr(gpu.images.cpu(), cpu.images)
    print(f"{name}: PSNR(GPU, CPU) per target {agreement.tolist()}")
    assert (agreement > 30).all(), agreement
    assert torch.allclose(gpu.feature_loss.cpu(), cpu.feature_loss, rtol=0.05, atol=1e-4)


def test_defended_features_are_the_same_on_either_device():
    h = torch.randn(4, 8, 5, 5)
    index = torch.tensor([3, 1, 4, 1])
    defense = GaussianNoise(0.5)
    on_cpu = defense(h, defense_generators(7, index))
    on_gpu = defense(h.cuda(), defense_generators(7, index))
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-6)
    noise = on_cpu - h  # one draw per index: the two samples of index 1 get the same noise
    assert torch.allclose(noise[1], noise[3], atol=1e-5) and not torch.allclose(noise[0], noise[1], atol=1e-5)


def test_the_attack_cli_runs_on_the_gpu_and_matches_the_cpu_run(tmp_path, isolated, plain_argv):
    artefacts = make_artefacts(tmp_path / "artefacts")
    folders = {}
    for accelerator in ("cpu", "gpu"):
        config = attack_config(artefacts, tmp_path, name=accelerator)
        config["trainer"]["accelerator"] = accelerator
        path = tmp_path / f"{accelerator}.yaml"
        path.write_text(yaml.safe_dump(config))
        folders[accelerator] = run_cli(path)
    _, cpu_rows = read_csv(folders["cpu"])
    _, gpu_rows = read_csv(folders["gpu"])
    assert [int(r["index"]) for r in gpu_rows] == TARGETS and all(r["status"] == "ok" for r in gpu_rows)
    for ours, theirs in zip(gpu_rows, cpu_rows):
        assert abs(float(ours["psnr"]) - float(theirs["psnr"])) < 0.5, (ours, theirs)
    assert float(gpu_rows[0]["peak_memory_mb"]) > 0  # measured on the GPU


def test_the_inverse_network_trains_on_the_gpu(tmp_path):
    import lightning as L

    data = SyntheticImages(resolution=16, train_split="public", val_split=None, batch_size=8)
    model = InverseNetworkTrainer(tiny_victim(), width=8, export=None)
    images = torch.stack([data.dataset("public")[i]["image"] for i in range(8)])

    def mse() -> float:
        model.eval()
        with torch.no_grad():
            x = images.to(model.device)
            return float(torch.nn.functional.mse_loss(model.decoder(model.observed(x)), x))

    before = mse()
    trainer = L.Trainer(
        accelerator="gpu", devices=1, max_steps=30, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    assert trainer.strategy.root_device.type == "cuda"  # Lightning hands the module back on the CPU after fit
    assert mse() < 0.7 * before
