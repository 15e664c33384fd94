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
import yaml

from bench import device_pack, pack_device_data, rescore_lpips
from pfo.attacks.outputs import AttackOutputs
from pfo.data import CIFAR10, LFW, TinyImageNetVal
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


def fake_faces(root: Path, make_image, victims: int = 2, public: int = 3) -> Path:
    """A flat ``lfw64/`` of 64-px JPEGs: ``victims`` people with LFW.MIN_IMAGES images each (the victim's classes),
    ``public`` people with two each (the prior's)."""
    seed = 100
    people = [(f"Victim_{k}", LFW.MIN_IMAGES) for k in range(victims)] + [(f"Public_{k}", 2) for k in range(public)]
    for person, count in people:
        for n in range(1, count + 1):
            make_image(root / "lfw64" / f"{person}_{n:04d}.jpg", size=64, seed=(seed := seed + 1))
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


def test_a_faces_bundle_carries_lfw_whole_with_its_splits(tmp_path, make_image):
    source = fake_faces(fake_sources(tmp_path / "source", make_image), make_image)
    bundle = tmp_path / "carry" / "data.bundle"
    sizes = pack_device_data.write_bundle(source, bundle, tinyimagenet=0, cifar10=False, lfw=True)
    assert set(sizes) == {"lfw64"}  # CIFAR-10 left behind: the faces call has no room for it
    copy = tmp_path / "copy"
    assert pack_device_data.unpack(bundle, copy) == 2 * LFW.MIN_IMAGES + 3 * 2
    assert not (copy / "cifar10").exists()
    original, copied = LFW(root=str(source / "lfw64")), LFW(root=str(copy / "lfw64"))
    for split in ("private", "public", "test"):  # people and images stay on their side
        assert [(r.key, r.label) for r in copied.records(split)] == [(r.key, r.label) for r in original.records(split)]
    assert {r.key.rsplit("_", 1)[0] for r in copied.records("public")} == {"Public_0", "Public_1", "Public_2"}
    with pytest.raises(SystemExit, match="no LFW images"):
        pack_device_data.write_bundle(tmp_path / "empty", tmp_path / "b", tinyimagenet=0, cifar10=False, lfw=True)


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
        "victim_cifar10_resnet18/victim.pt": os.urandom(5000),
        "victim_lfw_resnet18/victim.pt": os.urandom(3000),  # whatever the setting, each victim and prior travels
        "gan_cifar10/generator.pt": os.urandom(700),
        "gan_tinyimagenet/generator.pt": os.urandom(800),
        "gan_lfw/generator.pt": os.urandom(900),
    }
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    (work / "gan_cifar10" / "samples").mkdir()
    for step in (0, 500, 1000):
        torchvision.utils.save_image(torch.rand(3, 8, 8), work / "gan_cifar10" / "samples" / f"step_{step:06d}.png")
    (work / "gan_cifar10" / "events.out.tfevents.1").write_bytes(b"x" * 100)
    (work / "victim.log").write_text("".join(f"line {k}\n" for k in range(device_pack.LOG_LINES + 50)))
    (work / "calibration_blend_layer4").mkdir()
    (work / "calibration_blend_layer4" / "calibration.json").write_text('{"results": []}')
    (work / "radius_rule.yaml").write_text("radius_rule:\n  layer4: {guide_blend: 0.5}\n")
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
    parts = [p.name for p in packed if device_pack.PART in p.name]
    assert len([p for p in parts if p.startswith("victim_cifar10_resnet18.")]) > 1
    assert all((tmp_path / "out" / p).stat().st_size <= device_pack.PART_BYTES for p in parts)

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
    back = sorted(p.name for p in (tmp_path / "home2").iterdir())
    assert back == ["bench", "calibration_blend_layer4", device_pack.ORIGINALS, "radius_rule.yaml"]
    assert (tmp_path / "home2" / "radius_rule.yaml").read_text() == (tmp_path / "work" / "radius_rule.yaml").read_text()
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


TINY_VICTIM = (
    "--trainer.max_epochs 1 --trainer.limit_train_batches 1 --trainer.limit_val_batches 1 "
    "--trainer.check_val_every_n_epoch 1 --data.init_args.batch_size 8"
)


def tiny_call_env(tmp_path: Path, data: Path, **knobs: str) -> dict[str, str]:
    """The environment of bench/gpu_strong_priors.sh at tiny size on the CPU: one step of each training, two
    targets, three attack steps, ``layer4`` only; ``knobs`` add to it or replace."""
    return {
        **os.environ,
        "PYTHON": sys.executable,
        "BUNDLE": "",
        "PFO_DATA_ROOT": str(data),
        "WORK": str(tmp_path / "work"),
        "PACK": str(tmp_path / "out"),
        "OMP_NUM_THREADS": "1",
        "VICTIM_ARGS": TINY_VICTIM,
        "PRIOR_TIME": "00:00:02:00",
        "PRIOR_BATCH": "4",
        "PRIOR_ARGS": "--trainer.max_steps 1 --trainer.enable_progress_bar false",
        "BENCH_ARGS": "--targets 2 --steps 3 --n_init 2 --noise 0 --utility_images 4",
        "SPLITS": "layer4",
        "PRIOR_ATTACKS": "pfo",
        "JOBS": "1",
        "DEADLINE": "600",
        **knobs,
    }


@pytest.mark.slow
def test_the_gpu_call_runs_end_to_end_at_tiny_size_on_the_cpu(tmp_path, make_image):
    """bench/gpu_strong_priors.sh as the call runs it (victim, both priors, the benchmark, the pack), on synthetic
    JPEGs and a few steps; then unpacked as at home, every run is there and the table has each attack's row."""
    data = fake_sources(tmp_path / "data", make_image, train=12, test=4, tinyimagenet=8)
    env = tiny_call_env(
        tmp_path,
        data,
        VICTIM_ARGS=TINY_VICTIM + " --model.init_args.progressive_resizing []",
        MORE_SPLITS="",
        PLAIN_ATTACKS="rmle",
        ENCODER_ATTACKS="",
    )
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

    # A second call with the victim and priors already there (TRAIN=0): no training, the runs alone come back. It
    # runs issue 16's guided rows too: IN (training the decoder), the blend's fraction chosen on public images (the
    # in-distribution prior), then the blended row with that choice added to the committed rule.
    tiny_attack = "--model.init_args.steps [2,1,1,1] --model.init_args.n_init 2 --model.init_args.init_chunk 2"
    env.update(TRAIN="0", PACK=str(tmp_path / "out2"), PLAIN_ATTACKS="in", PRIOR_ATTACKS="glass",
               GUIDE_ATTACKS="pfo_radius_guide_blend", GUIDE_SPLITS="layer4", BLEND_GRID="0 0.5", CALIBRATE_COUNT="2",
               CALIBRATE_ARGS=tiny_attack)  # fmt: skip
    done = subprocess.run(["bash", "bench/gpu_strong_priors.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    log = (tmp_path / "out2" / "log.txt").read_text()
    assert done.returncode == 0 and "benchmark glass at layer4: exit 0" in log, done.stdout + done.stderr + log
    for step in ("calibrate guide_blend at layer4: exit 0", "benchmark pfo_radius_guide_blend at layer4: exit 0"):
        assert step in log, log
    assert "] train " not in log and sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["log.txt", "runs.tar.gz"]
    device_pack.unpack(tmp_path / "out2", tmp_path / "home2")
    glass = [p for p in (tmp_path / "home2" / "bench").glob("glass_layer4_*") if p.is_dir()]
    assert len(glass) == 2 and all(AttackOutputs(p).finished() == targets[0] for p in glass)
    rule = yaml.safe_load((tmp_path / "home2" / "radius_rule.yaml").read_text())["radius_rule"]
    committed = yaml.safe_load((REPO / "bench" / "rules" / "cifar10_resnet18.yaml").read_text())["radius_rule"]
    chosen = json.loads((tmp_path / "home2" / "calibration_blend_layer4" / "calibration.json").read_text())
    assert chosen["results"][0]["option"] == "guide_blend" and chosen["results"][0]["best"] in (0, 0.5)
    assert rule == {**committed, "layer4": {**committed["layer4"], "guide_blend": chosen["results"][0]["best"]}}
    blended = [p for p in (tmp_path / "home2" / "bench").glob("pfo_radius_guide_blend_layer4_*") if p.is_dir()]
    assert len(blended) == 2 and all(AttackOutputs(p).finished() == targets[0] for p in blended)
    args = yaml.safe_load((blended[0] / "config.yaml").read_text())["model"]["init_args"]
    assert args["radius_rule"]["layer4"]["guide_blend"] == rule["layer4"]["guide_blend"] and args["guide"]


@pytest.mark.slow
def test_the_faces_gpu_call_runs_end_to_end_at_tiny_size_on_the_cpu(tmp_path, make_image):
    """SETTING=faces: the LFW victim and the LFW prior trained, the faces benchmark run with them, packed and unpacked
    as at home (the pretrained DigiFace prior is left out here: its weights are not in a fresh clone)."""
    data = fake_faces(tmp_path / "data", make_image)
    env = tiny_call_env(
        tmp_path,
        data,
        SETTING="faces",
        NAMED_PRIORS="",
        VICTIM_ARGS=TINY_VICTIM + " --model.init_args.net.init_args.num_classes 2",
        PLAIN_ATTACKS="",
    )
    done = subprocess.run(["bash", "bench/gpu_strong_priors.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "setting faces" in log and "train victim: exit 0" in log and "train gan_lfw: exit 0" in log, log
    assert "benchmark pfo at layer4: exit 0" in log and "gan_cifar10" not in log, log

    device_pack.unpack(tmp_path / "out", tmp_path / "home")
    for name in ("victim_lfw_resnet18/victim.pt", "gan_lfw/generator.pt"):
        assert (tmp_path / "home" / name).read_bytes() == (tmp_path / "work" / name).read_bytes()
    runs = [p for p in (tmp_path / "home" / "bench").glob("pfo_layer4_lfw_*") if p.is_dir()]
    assert len(runs) == 1 and len(AttackOutputs(runs[0]).finished()) == 2
    result = AttackOutputs(runs[0]).read_target(min(AttackOutputs(runs[0]).finished()))
    assert result["reconstruction"].shape == result["original"].shape == (3, 64, 64)  # the faces' resolution

    bad = subprocess.run(
        ["bash", "bench/gpu_strong_priors.sh"],
        cwd=REPO,
        env={**env, "SETTING": "celeba"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "SETTING is cifar10 or faces, not 'celeba'" in bad.stderr
