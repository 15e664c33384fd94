"""The prior interface (pfo.models.prior), PFO and GLASS over it, their option checks, and the named priors.

- The StyleGAN2 path is bitwise what it was before the interface: the attacks of the last commit before it
  (read from git history into a temporary module) and today's give identical tensors.
- With a DCGAN prior, PFO and GLASS lower the feature loss and recover a target the prior renders exactly; PFO's
  l1 balls hold for the DCGAN state; a target does not depend on its batch neighbours.
- Every option error names the option as typed and comes before any file is read or any step runs.
- A named prior resolves to a verified file in the cache; a missing, damaged or foreign file gets one clear line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import REPO
from test_attack import ProjectionProbe, attack_images, tiny_generator, tiny_victim
from test_dcgan import DIGIFACE, tiny_dcgan

from pfo.artifacts import ArtifactError
from pfo.attacks import GLASS, PFO
from pfo.metrics import psnr
from pfo.models import load_prior
from pfo.models.dcgan import DCGANGenerator
from pfo.models.named_priors import (
    CACHE_ENV,
    NAMED_PRIORS,
    default_cache_dir,
    fetch_command,
    named_prior_path,
)
from pfo.models.prior import DCGANPrior, StyleGAN2Prior, as_prior

pytestmark = [
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
]

RES = 16

# The last commit whose pfo/attacks/pfo.py and glass.py talked to the StyleGAN2 generator directly.
BEFORE_INTERFACE = "2f930bb45d43ba22705e8dcd7c2eb267ace9e915"


# ----- the StyleGAN2 path, bitwise as before -------------------------------------------------------------------


def _module_from_history(name: str, path: str, replace: dict[str, str], monkeypatch) -> types.ModuleType:
    try:
        shown = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{BEFORE_INTERFACE}:{path}"], capture_output=True, text=True
        )
    except OSError:
        pytest.skip("git is not available: the code before the prior interface cannot be read")
    if shown.returncode != 0:
        pytest.skip(f"commit {BEFORE_INTERFACE[:7]} is not in this clone (shallow?): {shown.stderr.strip()[:100]}")
    source = shown.stdout
    for old, new in replace.items():
        assert old in source
        source = source.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = f"{BEFORE_INTERFACE[:7]}:{path}"
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


@pytest.fixture
def attacks_before_interface(monkeypatch) -> dict[str, type]:
    old_pfo = _module_from_history("pfo_before_interface", "pfo/attacks/pfo.py", {}, monkeypatch)
    old_glass = _module_from_history(
        "glass_before_interface",
        "pfo/attacks/glass.py",
        {"from pfo.attacks.pfo import": "from pfo_before_interface import"},
        monkeypatch,
    )
    return {"PFO": old_pfo.PFO, "GLASS": old_glass.GLASS}


STYLEGAN_CASES = {
    "pfo_defaults": ("PFO", {"steps": [6, 3, 3]}),
    "pfo_radii_restarts": (
        "PFO",
        {"steps": [4, 3, 3], "lr": [0.05, 0.1, 0.02], "radius_mode": "absolute", "feature_radius": [0.5, 2.0],
         "image_radius": 0.3, "style_radius": 0.2, "restarts": 1, "truncation": 0.5, "noise_mode": "none"},
    ),
    "glass": ("GLASS", {"candidates": 2, "short_steps": 4, "steps": 6}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(STYLEGAN_CASES))
def test_the_stylegan2_path_is_bitwise_the_code_before_the_prior_interface(case, attacks_before_interface):
    name, settings = STYLEGAN_CASES[case]
    settings = {"n_init": 4, "init_chunk": 4, "progress": False, **settings}
    now = {"PFO": PFO, "GLASS": GLASS}[name](tiny_victim(), tiny_generator(), **settings)
    before = attacks_before_interface[name](tiny_victim(), tiny_generator(), **settings)
    targets = [4, 9]
    new, _ = attack_images(now, targets)
    old, _ = attack_images(before, targets)
    assert torch.equal(new.images, old.images)
    assert torch.equal(new.feature_loss, old.feature_loss)
    assert len(new.stage_images) == len(old.stage_images)
    for a, b in zip(new.stage_images + new.stage_losses, old.stage_images + old.stage_losses):
        assert torch.equal(a, b)
    if name == "PFO":
        assert torch.equal(new.best_stage, old.best_stage)
        assert len(new.stage_images) == len(settings["steps"])


# ----- the interface over StyleGAN2 ----------------------------------------------------------------------------


def test_the_stylegan2_view_forwards_to_the_generators_block_api():
    G = tiny_generator().eval()
    prior = as_prior(G, noise_mode="const")
    assert isinstance(prior, StyleGAN2Prior) and as_prior(prior) is prior
    assert prior.state_names == ("x", "img") and prior.latent_name == "wplus"
    assert prior.wplus_shape == (G.num_ws, G.w_dim)
    assert (prior.num_blocks, prior.block_resolutions, prior.resolution, prior.z_dim) == (3, [4, 8, 16], 16, 16)
    z = prior.sample_z(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        w = prior.map(z, truncation=0.7)
        assert torch.equal(w, G.mapping(z, truncation_psi=0.7))
        ws = prior.expand(w)
        assert ws.shape == (3, G.num_ws, G.w_dim) and torch.equal(ws[:, 0], w) and torch.equal(ws[:, -1], w)
        image = prior.render(ws)
        assert torch.equal(image, G.synthesis(ws, noise_mode="const"))
        for k in range(1, prior.num_blocks):
            assert prior.latent_split(k) == G.ws_slice(k).start
            state = prior.state_at(k, ws)
            assert torch.equal(prior.synthesize_from(k, tuple(state), ws), image)
    with pytest.raises(TypeError, match="subclass of pfo.models.prior.Prior"):
        as_prior(torch.nn.Linear(2, 2))


# ----- PFO and GLASS with a DCGAN prior ------------------------------------------------------------------------


def dcgan_targets(count: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] that the tiny DCGAN renders exactly (from latents it never sees), and their indices."""
    z = torch.randn(count, 8, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        return (tiny_dcgan()(z) * 0.5 + 0.5).clamp(0, 1), torch.arange(count)


def reconstruct(attack, images: torch.Tensor, index: torch.Tensor):
    h = attack.client_features(images, index)
    with torch.enable_grad():
        return attack.reconstruct(h, index), h


@pytest.mark.slow
def test_pfo_and_glass_recover_a_target_the_dcgan_prior_renders():
    """Against the 16-px victim at layer1, targets the tiny DCGAN renders. Measured when written (2 targets):
    PFO (40, 20, 20 steps) 30.0 / 25.5 dB after stage 0 and 44.0 / 44.6 dB at the end, every stage lowering the
    feature loss; GLASS (13 + 40 steps) 44.8 / 31.1 dB; the two targets are 8.5 dB apart. Thresholds keep about
    5 dB of margin."""
    images, index = dcgan_targets()
    assert psnr(images[:1], images[1:]) < 12  # the targets differ: a high PSNR below is not a flat-image artefact

    pfo = PFO(tiny_victim(), tiny_dcgan(), steps=[40, 20, 20], n_init=8, init_chunk=8, truncation=1.0, progress=False)
    assert isinstance(pfo.prior, DCGANPrior)
    result, h = reconstruct(pfo, images, index)
    with torch.no_grad():
        start = pfo.best_latents(h, index, 8, 8)
        initial = pfo.evaluate(pfo.prior.render(start), h)[1]
    losses = torch.stack(result.stage_losses)
    assert (losses[0] < initial).all() and (losses[2] < losses[1]).all() and (losses[1] < losses[0]).all(), losses
    assert not result.failed.any()
    assert (psnr(result.images, images) > 39).all(), psnr(result.images, images)
    assert (psnr(result.stage_images[0], images) < psnr(result.images, images)).all()  # the feature stages helped

    glass = GLASS(
        tiny_victim(), tiny_dcgan(), n_init=8, init_chunk=8, candidates=2, short_steps=13, steps=40, truncation=1.0,
        progress=False,
    )  # fmt: skip
    found, _ = reconstruct(glass, images, index)
    assert (found.feature_loss < initial).all()
    assert (psnr(found.images, images) > 26).all(), psnr(found.images, images)


def test_the_l1_balls_hold_for_the_dcgan_state_and_latent_after_every_step():
    """Stage 0 (z, with ``latent_radius``) and each feature stage (the activation entering the block): after every
    step, each sample's l1 deviation from the stage start is within its radius, and every radius binds."""
    attack = ProjectionProbe(
        tiny_victim(), tiny_dcgan(), steps=[4, 5, 5], lr=0.1, n_init=4, init_chunk=4, progress=False,
        feature_radius=[0.01, 0.02], latent_radius=0.05,
    )  # fmt: skip
    attack_images(attack, [0, 5])
    names = [name for name, _ in attack.records]
    assert names == ["stage0_z"] * 4 + ["stage1_b8"] * 5 + ["stage2_b16"] * 5
    assert attack.sizes == [[8], [16 * 4 * 4], [8 * 8 * 8]]  # z, then x only: no skip image, no styles
    radii = {"stage0_z": 0.05 * 8, "stage1_b8": 0.01 * 256, "stage2_b16": 0.02 * 512}
    bound = dict.fromkeys(radii, 0)
    for name, (norm,) in attack.records:
        assert (norm <= radii[name] * (1 + 1e-5) + 1e-6).all(), (name, norm, radii[name])
        bound[name] += int((norm > radii[name] * (1 - 1e-3)).sum())
    assert all(bound.values()), f"a radius never bound, so this test could not see its projection missing: {bound}"

    free = ProjectionProbe(tiny_victim(), tiny_dcgan(), steps=[4, 5, 5], n_init=4, init_chunk=4, progress=False)
    attack_images(free, [0, 5])
    assert [name for name, _ in free.records][0] == "stage1_b8"  # without latent_radius stage 0 is unconstrained


@pytest.mark.parametrize("name", ["pfo", "glass"])
def test_a_target_does_not_depend_on_its_neighbours_with_a_dcgan_prior(name):
    def build():
        if name == "pfo":
            return PFO(tiny_victim(), tiny_dcgan(), steps=[6, 3, 3], n_init=4, init_chunk=4, progress=False)
        return GLASS(tiny_victim(), tiny_dcgan(), n_init=4, init_chunk=4, candidates=2, short_steps=3, steps=6,
                     progress=False)  # fmt: skip

    first, _ = attack_images(build(), [3, 7])
    second, _ = attack_images(build(), [14, 3])
    assert torch.equal(first.images[0], second.images[1])
    assert torch.equal(first.feature_loss[0], second.feature_loss[1])
    for s1, s2 in zip(first.stage_images + first.stage_losses, second.stage_images + second.stage_losses):
        assert torch.equal(s1[0], s2[1])
    assert not torch.equal(first.images[0], first.images[1])


# ----- options are checked when the attack is built, before anything is read or run ----------------------------

BAD_OPTIONS = [
    (PFO, {"feature_radius": -0.1}, "`feature_radius` -0.1 must be a finite number >= 0"),
    (PFO, {"feature_radius": [0.1]}, "`feature_radius` lists 1 values but there are 2 feature stages after stage 0"),
    (PFO, {"image_radius": [0.1, -1.0]}, "`image_radius` [0.1, -1.0] must hold finite numbers >= 0"),
    (PFO, {"style_radius": [0.1, 0.1, 0.1]}, "`style_radius` lists 3 values but there are 2 feature stages"),
    (PFO, {"latent_radius": -2.0}, "`latent_radius` -2.0 must be a finite number >= 0"),
    (PFO, {"lr": 0.0}, "`lr` 0.0 must be a finite number > 0"),
    (PFO, {"lr": [0.1, 0.1]}, "`lr` lists 2 values but there are 3 stages"),
    (PFO, {"lr": [0.1, float("nan"), 0.1]}, "`lr` [0.1, nan, 0.1] must hold finite numbers > 0"),
    (PFO, {"steps": [5, -1]}, "`steps` must list non-negative step counts per stage, got [5, -1]"),
    (PFO, {"steps": [5, 2.5]}, "`steps` must list non-negative step counts per stage, got [5, 2.5]"),
    (PFO, {"steps": []}, "`steps` must list non-negative step counts per stage, got []"),
    (PFO, {"n_init": 0}, "`n_init` 0 must be an integer >= 1"),
    (PFO, {"init_chunk": 0}, "`init_chunk` 0 must be an integer >= 1"),
    (PFO, {"radius_mode": "relative"}, "`radius_mode` 'relative' must be one of per_element, absolute"),
    (PFO, {"restarts": -1}, "`restarts` -1 must be an integer >= 0"),
    (PFO, {"restarts": 4}, "`restarts` must lie in [0, n_init)"),
    (PFO, {"truncation": 0.0}, "`truncation` 0.0 must be a finite number > 0"),
    (PFO, {"noise_mode": "random"}, "`noise_mode` 'random' must be one of const, none"),
    (GLASS, {"candidates": 0}, "`candidates` 0 must be an integer >= 1"),
    (GLASS, {"candidates": 5}, "`candidates` must be in 1..n_init (4), got 5"),
    (GLASS, {"short_steps": -1}, "`short_steps` -1 must be an integer >= 0"),
    (GLASS, {"steps": 2.5}, "`steps` 2.5 must be an integer >= 0"),
    (GLASS, {"lr": -0.1}, "`lr` -0.1 must be a finite number > 0"),
    (GLASS, {"noise_scale": -1.0}, "`noise_scale` -1.0 must be a finite number >= 0"),
    (GLASS, {"noise_ramp": float("inf")}, "`noise_ramp` inf must be a finite number >= 0"),
    (GLASS, {"truncation": -0.5}, "`truncation` -0.5 must be a finite number > 0"),
]


@pytest.mark.parametrize(
    ("cls", "bad", "message"), BAD_OPTIONS, ids=[f"{c.__name__}-{list(b)[0]}" for c, b, _ in BAD_OPTIONS]
)
def test_a_bad_option_is_named_as_typed_before_any_file_is_read(cls, bad, message, tmp_path):
    """The victim and prior paths do not exist: had anything been loaded (or run) first, the error would be
    about a missing file."""
    settings = {"n_init": 4, "progress": False, **({"steps": [6, 3, 3]} if cls is PFO else {})}
    with pytest.raises(ValueError) as error:
        cls(str(tmp_path / "no_victim.pt"), str(tmp_path / "no_prior.pt"), **{**settings, **bad})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_options_that_depend_on_the_prior_are_checked_right_after_it_loads():
    with pytest.raises(ValueError, match=r"3 blocks, so at most 2; shorten `steps`"):
        PFO(tiny_victim(), tiny_dcgan(), steps=[2, 2, 2, 2], n_init=2)
    # A valid list per feature stage is accepted and used stage by stage.
    attack = PFO(
        tiny_victim(), tiny_dcgan(), steps=[1, 1, 1], n_init=2, lr=[0.1, 0.05, 0.02], feature_radius=[0.1, 0.2]
    )
    assert attack.steps == [1, 1, 1]


# ----- named priors --------------------------------------------------------------------------------------------

NAME = "digiface-dcgan64"


def _one_line_with_the_fetch_command(error: BaseException, cache: Path) -> None:
    text = str(error)
    assert "\n" not in text
    assert fetch_command(NAME, cache) in text
    assert "pip download gan-face-generate==1.1.1 --no-deps" in text


def test_a_missing_named_prior_says_the_one_command_that_fetches_it(tmp_path, monkeypatch):
    cache = tmp_path / "cache dir"  # a space: the command quotes the path
    with pytest.raises(FileNotFoundError) as error:
        named_prior_path(NAME, cache)
    _one_line_with_the_fetch_command(error.value, cache)
    assert f"'{cache}/digiface_dcgan64_weights.tar'" in str(error.value)
    # Through load_prior, with the cache from the environment.
    monkeypatch.setenv(CACHE_ENV, str(cache))
    with pytest.raises(FileNotFoundError) as error:
        load_prior(NAME)
    _one_line_with_the_fetch_command(error.value, cache)
    assert CACHE_ENV in str(error.value)


def test_a_damaged_or_foreign_named_prior_file_gets_one_clear_line(tmp_path):
    path = tmp_path / NAMED_PRIORS[NAME].filename
    torch.save({"netG_state_dict": tiny_dcgan().state_dict()}, path)  # readable, but not the registered bytes
    with pytest.raises(ArtifactError) as error:
        named_prior_path(NAME, tmp_path)
    assert f"is not the file of the named prior '{NAME}' (sha256 " in str(error.value)
    assert hashlib.sha256(path.read_bytes()).hexdigest()[:16] in str(error.value)
    _one_line_with_the_fetch_command(error.value, tmp_path)

    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short, as by an interrupted download
    with pytest.raises(ArtifactError) as error:
        named_prior_path(NAME, tmp_path)
    assert "is damaged or incomplete; delete it and fetch it again" in str(error.value)
    _one_line_with_the_fetch_command(error.value, tmp_path)


def test_the_cache_folder_is_the_argument_then_the_environment_then_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "pfo" / "priors"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pfo" / "priors"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "explicit")):
        named_prior_path(NAME, tmp_path / "explicit")
    with pytest.raises(ValueError, match="no named prior 'celeba-gan'; the named priors are digiface-dcgan64"):
        fetch_command("celeba-gan")


@pytest.fixture
def digiface_cache(tmp_path, monkeypatch) -> Path:
    """A prior cache holding the shared DigiFace weights (linked, not copied), named by ``PFO_PRIOR_CACHE``."""
    if not DIGIFACE.is_file():
        pytest.skip(f"no DigiFace weights at {DIGIFACE}: the shared folder is absent")
    cache = tmp_path / "priors"
    cache.mkdir()
    try:
        os.symlink(DIGIFACE, cache / NAMED_PRIORS[NAME].filename)
    except OSError:
        shutil.copyfile(DIGIFACE, cache / NAMED_PRIORS[NAME].filename)
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


def test_the_named_digiface_prior_loads_by_name_and_by_path(digiface_cache, tmp_path):
    from pfo.artifacts import file_digest
    from pfo.models.generator_file import load_prior_networks
    from pfo.models.named_priors import load_named_prior

    assert file_digest(DIGIFACE) == NAMED_PRIORS[NAME].sha256  # the registry names the published file
    by_name = load_prior(NAME)
    by_path = load_prior(str(DIGIFACE))
    explicit = load_named_prior(NAME, cache_dir=digiface_cache)
    assert isinstance(by_name, DCGANGenerator) and by_name.config == {"nz": 100, "ngf": 64, "nc": 3, "resolution": 64}
    z = torch.randn(2, 100)
    with torch.no_grad():
        assert torch.equal(by_name(z), by_path(z)) and torch.equal(by_name(z), explicit(z))
    with pytest.raises(ArtifactError, match="only StyleGAN2 is fine-tuned"):
        load_prior_networks(DIGIFACE)
    # The attack's `generator` option takes the name (a 64-px victim: the prior is not upsampled).
    attack = PFO(tiny_victim(input_size=64), NAME, steps=[1, 1], n_init=2, progress=False)
    assert isinstance(attack.prior, DCGANPrior) and attack.prior.resolution == 64
    assert not any(p.requires_grad for p in attack.generator.parameters()) and not attack.generator.training
