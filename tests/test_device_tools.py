"""The tools of a GPU call (bench/): the data bundle that travels there, the pack that comes back, LPIPS added at home,
and the call's script itself at tiny size on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from bench import device_pack, pack_device_data, rescore_lpips
from pfo.attacks.outputs import AttackOutputs
from pfo.data import CIFAR10, TinyImageNetVal
from pfo.metrics import load_lpips, lpips_distance

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile")


def fake_sources(root: Path, make_image, train: int = 8, test: int = 3, tinyimagenet: int = 5) -> Path:
    """CIFAR-10 class folders and a Tiny-ImageNet validation folder of small JPEGs under ``root``."""
    seed = 0
    for part, count in (("train", train), ("test", test)):
        for cls in CLASSES:
            for k in range(count):
                make_image(root / "cifar10" / part / cls / f"{k:04d}.jpg", size=32, seed=(seed := seed + 1))
    tin = root / "tiny_imagenet_val"
    lines = []
    for k in range(tinyimagenet):
        make_image(tin / "images" / f"val_{k}.JPEG", size=64, seed=(seed := seed + 1), fmt="JPEG")
        lines.append(f"val_{k}.JPEG\tn0{k % 2}\t0\t0\t63\t63")
    (tin / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (tin / "wnids.txt").write_text("n00\nn01\n")
    return root


def test_the_data_bundle_unpacks_to_the_same_files_and_the_same_splits(tmp_path, make_image):
    source = fake_sources(tmp_path / "source", make_image)
    bundle = tmp_path / "carry" / "data.bundle"
    sizes = pack_device_data.write_bundle(source, bundle, tinyimagenet=3)
    assert sizes["cifar10"] == sum(p.stat().st_size for p in (source / "cifar10").rglob("*.jpg"))
    copy = tmp_path / "copy"
    assert pack_device_data.unpack(bundle, copy) == 2 * (8 + 3) + 3 + 2  # images, annotations and wnids

    for path in (source / "cifar10").rglob("*.jpg"):
        assert (copy / path.relative_to(source)).read_bytes() == path.read_bytes()
    original, copied = CIFAR10(root=str(source / "cifar10")), CIFAR10(root=str(copy / "cifar10"))
    for split in ("private", "public", "test"):  # the split of a file is its key's: the copy cannot move one
        assert [r.key for r in copied.records(split)] == [r.key for r in original.records(split)]
    assert {r.key for r in copied.records("public")} and {r.key for r in copied.records("private")}
    tin = TinyImageNetVal(root=str(copy / "tiny_imagenet_val")).records("public")
    assert [r.key for r in tin] == ["val_0.JPEG", "val_1.JPEG", "val_2.JPEG"]  # only the images bundled are listed
    assert all(Path(r.source).read_bytes() == (source / "tiny_imagenet_val/images" / r.key).read_bytes() for r in tin)

    # A call that only attacks takes the test images and a few training images (the data module wants train/).
    small = tmp_path / "small"
    pack_device_data.write_bundle(source, small / "data.bundle", tinyimagenet=0, cifar10_train=3)
    pack_device_data.unpack(small / "data.bundle", small / "copy")
    assert len(list((small / "copy" / "cifar10" / "train").rglob("*.jpg"))) == 3
    test = CIFAR10(root=str(small / "copy" / "cifar10")).records("test")
    assert [r.key for r in test] == [r.key for r in original.records("test")]
    assert not (small / "copy" / "tiny_imagenet_val").exists()


def attack_result(index: int, original: torch.Tensor, stages: int = 3) -> dict:
    """A target's result as an attack writes it (``pfo.attacks.base``), without LPIPS."""
    recon = (original + 0.1 * torch.randn_like(original)).clamp(0, 1)
    return {
        "index": index,
        "label": 0,
        "status": "ok",
        "best_stage": stages - 1,
        "prior_class": None,
        "reconstruction": recon,
        "stage_images": torch.stack([recon] * stages),
        "stage_losses": torch.ones(stages),
        "metrics": {"psnr": 20.0 + index, "ssim": 0.5, "collapsed": 0.0, "feature_distance": 0.01},
        "unreported": {},
        "seconds": 1.5,
        "peak_memory_mb": 10.0,
        "original": original,
    }


def fake_work(work: Path, originals: dict[int, torch.Tensor]) -> dict[str, bytes]:
    """A GPU call's work folder: a victim, two priors with sample grids, two attack runs on the same targets."""
    files = {
        device_pack.VICTIM: os.urandom(5000),
        "gan_cifar10/generator.pt": os.urandom(700),
        "gan_tinyimagenet/generator.pt": os.urandom(800),
    }
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    (work / "gan_cifar10" / "samples").mkdir()
    for step in (0, 500, 1000):
        torchvision.utils.save_image(torch.rand(3, 8, 8), work / "gan_cifar10" / "samples" / f"step_{step:06d}.png")
    (work / "gan_cifar10" / "events.out.tfevents.1").write_bytes(b"x" * 100)
    (work / "victim.log").write_text("".join(f"line {k}\n" for k in range(device_pack.LOG_LINES + 50)))
    for run in ("pfo_layer4_cifar10", "glass_layer4_cifar10"):
        outputs = AttackOutputs(work / "bench" / run)
        for index, original in originals.items():
            outputs.write_target(index, attack_result(index, original))
        outputs.merge()
    return files


def test_the_pack_brings_back_every_result_the_victim_and_the_priors(tmp_path, monkeypatch):
    monkeypatch.setattr(device_pack, "PART_BYTES", 1024)  # the victim in several parts, as a real one is
    originals = {0: torch.rand(3, 32, 32), 5: torch.rand(3, 32, 32)}
    files = fake_work(tmp_path / "work", originals)
    packed = device_pack.pack(tmp_path / "work", tmp_path / "out")
    assert len([p for p in packed if p.name.startswith("victim.pt.gz.")]) > 1 and len(packed) <= 8

    home = tmp_path / "home"
    device_pack.unpack(tmp_path / "out", home)
    for name, data in files.items():
        assert (home / name).read_bytes() == data
    samples = sorted(p.name for p in (home / "gan_cifar10" / "samples").glob("*.png"))
    assert samples == ["step_000500.png", "step_001000.png"]  # each prior's last two grids
    assert not list(home.rglob("events.out.tfevents.*"))
    assert len((home / "victim.log").read_text().splitlines()) == device_pack.LOG_LINES
    for run in ("pfo_layer4_cifar10", "glass_layer4_cifar10"):
        outputs = AttackOutputs(home / "bench" / run)
        sent = AttackOutputs(tmp_path / "work" / "bench" / run)
        assert outputs.finished() == set(originals)
        for index in originals:
            back, there = outputs.read_target(index), sent.read_target(index)
            assert torch.equal(back["original"], there["original"])
            assert torch.equal(back["reconstruction"], there["reconstruction"])
            assert back["metrics"] == there["metrics"] and back["seconds"] == there["seconds"]
            assert "stage_images" not in back  # what the trip leaves behind
        assert json.loads((outputs.folder / "summary.json").read_text()) == json.loads(
            (sent.folder / "summary.json").read_text()
        )

    # After a call that only attacked, only the runs come back (the victim and the priors are at home already).
    packed = device_pack.pack(tmp_path / "work", tmp_path / "runs_only", runs_only=True)
    assert [p.name for p in packed] == [device_pack.RUNS]
    device_pack.unpack(tmp_path / "runs_only", tmp_path / "home2")
    assert sorted(p.name for p in (tmp_path / "home2").iterdir()) == ["bench", device_pack.ORIGINALS]
    assert AttackOutputs(tmp_path / "home2" / "bench" / "pfo_layer4_cifar10").finished() == set(originals)


def test_the_pack_refuses_runs_whose_targets_disagree(tmp_path):
    work = tmp_path / "work"
    fake_work(work, {0: torch.rand(3, 32, 32)})
    AttackOutputs(work / "bench" / "other").write_target(0, attack_result(0, torch.rand(3, 32, 32)))
    with pytest.raises(ValueError, match="differs from the same target in another run"):
        device_pack.pack(work, tmp_path / "out")


@pytest.fixture(scope="module")
def alexnet_weights(tmp_path_factory) -> Path:
    """A torchvision-layout AlexNet ``features`` state dict with random weights (no download, no shared folder)."""
    torch.manual_seed(0)
    features = torchvision.models.alexnet(weights=None).features
    path = tmp_path_factory.mktemp("alexnet") / "alexnet_features.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def test_lpips_is_added_from_each_targets_stored_images(tmp_path, alexnet_weights):
    originals = {0: torch.rand(3, 32, 32), 1: torch.rand(3, 32, 32), 2: torch.rand(3, 32, 32)}
    outputs = AttackOutputs(tmp_path / "runs" / "pfo")
    for index, original in originals.items():
        outputs.write_target(index, attack_result(index, original))
    without = attack_result(3, torch.rand(3, 32, 32))
    without.pop("original")
    outputs.write_target(3, without)  # no original: cannot be scored, stays as it is
    outputs.merge()

    model = load_lpips(alexnet_weights)
    assert rescore_lpips.run_folders([tmp_path / "runs"]) == [outputs.folder]
    assert rescore_lpips.rescore(outputs.folder, model) == 3
    expected = []
    for index in originals:
        result = outputs.read_target(index)
        want = lpips_distance(model, result["reconstruction"][None], result["original"][None])[0].item()
        assert result["metrics"]["lpips"] == pytest.approx(want, rel=1e-6)
        assert result["metrics"]["psnr"] == 20.0 + index  # every other metric as the run measured it
        expected.append(want)
    assert "lpips" not in outputs.read_target(3)["metrics"]
    summary = json.loads((outputs.folder / "summary.json").read_text())
    assert summary["metrics"]["lpips"]["n"] == 3
    assert summary["metrics"]["lpips"]["mean"] == pytest.approx(sum(expected) / 3, rel=1e-5)
    assert rescore_lpips.rescore(outputs.folder, model) == 0  # already scored: nothing to redo


def test_rescoring_names_the_folder_without_runs(tmp_path, alexnet_weights):
    with pytest.raises(SystemExit, match="no attack run folders"):
        rescore_lpips.main([str(tmp_path), "--lpips_weights", str(alexnet_weights)])


@pytest.mark.slow
def test_the_gpu_call_runs_end_to_end_at_tiny_size_on_the_cpu(tmp_path, make_image):
    """bench/gpu_strong_priors.sh as the call runs it (victim, both priors, the benchmark, the pack), on synthetic
    JPEGs and a few steps; then unpacked as at home, every run is there and the table has each attack's row."""
    data = fake_sources(tmp_path / "data", make_image, train=12, test=4, tinyimagenet=8)
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "BUNDLE": "",
        "PFO_DATA_ROOT": str(data),
        "WORK": str(tmp_path / "work"),
        "PACK": str(tmp_path / "out"),
        "OMP_NUM_THREADS": "1",
        "VICTIM_ARGS": "--trainer.max_epochs 1 --trainer.limit_train_batches 1 --trainer.limit_val_batches 1 "
        "--trainer.check_val_every_n_epoch 1 --model.init_args.progressive_resizing [] --data.init_args.batch_size 8",
        "PRIOR_TIME": "00:00:02:00",
        "PRIOR_BATCH": "4",
        "PRIOR_ARGS": "--trainer.max_steps 1 --trainer.enable_progress_bar false",
        "BENCH_ARGS": "--targets 2 --steps 3 --n_init 2 --noise 0 --utility_images 4",
        "SPLITS": "layer4",
        "MORE_SPLITS": "",
        "PLAIN_ATTACKS": "rmle",
        "PRIOR_ATTACKS": "pfo",
        "ENCODER_ATTACKS": "",
        "JOBS": "1",
        "DEADLINE": "600",
    }
    done = subprocess.run(["bash", "bench/gpu_strong_priors.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("train victim: exit 0", "train gan_cifar10: exit 0", "train gan_tinyimagenet: exit 0"):
        assert step in log, log
    assert "benchmark pfo at layer4: exit 0" in log and "benchmark rmle at layer4: exit 0" in log, log

    device_pack.unpack(tmp_path / "out", tmp_path / "home")
    runs = sorted(p.name.split("_noise")[0] for p in (tmp_path / "home" / "bench").glob("*_layer4_*") if p.is_dir())
    assert runs == ["pfo_layer4_cifar10", "pfo_layer4_tinyimagenet", "rmle_layer4_none"]
    for name in ("victim_cifar10_resnet18/victim.pt", "gan_cifar10/generator.pt", "gan_tinyimagenet/generator.pt"):
        assert (tmp_path / "home" / name).read_bytes() == (tmp_path / "work" / name).read_bytes()
    targets = [
        AttackOutputs(run).finished() for run in (tmp_path / "home" / "bench").glob("*_layer4_*") if run.is_dir()
    ]
    assert len(targets[0]) == 2 and all(t == targets[0] for t in targets)  # every attack on the same two targets

    # A second call with the victim and priors already there (TRAIN=0): no training, the runs alone come back.
    env.update(TRAIN="0", PACK=str(tmp_path / "out2"), PLAIN_ATTACKS="", PRIOR_ATTACKS="glass")
    done = subprocess.run(["bash", "bench/gpu_strong_priors.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    log = (tmp_path / "out2" / "log.txt").read_text()
    assert done.returncode == 0 and "benchmark glass at layer4: exit 0" in log, done.stdout + done.stderr + log
    assert "] train " not in log and sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["log.txt", "runs.tar.gz"]
    device_pack.unpack(tmp_path / "out2", tmp_path / "home2")
    glass = [p for p in (tmp_path / "home2" / "bench").glob("glass_layer4_*") if p.is_dir()]
    assert len(glass) == 2 and all(AttackOutputs(p).finished() == targets[0] for p in glass)
