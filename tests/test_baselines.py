"""The baselines (rMLE, LM, GLASS, the inverse network) through the Python API, at the tiny size of test_attack:
each one lowers the feature loss it is given and keeps its targets independent; GLASS's latent noise follows its
schedule; the inverse network refuses a decoder made for another split point, defense or victim, and keeps its
decoder in eval mode. (That the inverse network learns only from public data: tests/test_threat_model.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
from test_attack import attack_images, quiet_trainer, tiny_generator, tiny_victim  # tests/ is on sys.path

from pfo.attacks import GLASS, LM, RMLE, GaussianNoise, InverseNetwork
from pfo.models import ResNet, save_victim

pytestmark = [
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
]

TARGETS = [0, 5, 10]


def build(name: str, steps: int):
    """A baseline at the tiny size with ``steps`` optimisation steps (0: its starting point)."""
    common = {"progress": False}
    if name == "rmle":
        return RMLE(tiny_victim(), steps=steps, **common)
    if name == "lm":
        return LM(tiny_victim(), steps=steps, width=16, noise_channels=8, **common)
    if name == "lm_no_norm":
        return LM(tiny_victim(), steps=steps, width=16, noise_channels=8, norm=False, **common)
    return GLASS(
        tiny_victim(), tiny_generator(), n_init=4, init_chunk=4, candidates=2, short_steps=steps // 3,
        steps=steps - steps // 3, **common,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["rmle", "lm", "glass"])
def test_each_baseline_lowers_the_feature_loss_of_every_target(name):
    start, _ = attack_images(build(name, 0), TARGETS)
    end, _ = attack_images(build(name, 30), TARGETS)
    assert torch.isfinite(end.feature_loss).all() and not end.failed.any()
    assert (end.feature_loss < 0.8 * start.feature_loss).all(), (start.feature_loss, end.feature_loss)
    assert end.images.shape == (3, 3, 16, 16)
    assert end.images.min() >= 0 and end.images.max() <= 1


@pytest.mark.parametrize("name", ["lm", "lm_no_norm", "rmle", "glass"])
def test_a_baselines_target_is_bitwise_the_same_whatever_its_neighbours(name):
    """LM runs one network per target as grouped convolutions, with per-channel normalisation: nothing may mix
    targets (a shared weight or a statistic over the batch would). GLASS optimises every target's candidates in one
    batch and draws its latent noise per target (6 steps: noise in the first 4)."""
    first, _ = attack_images(build(name, 8), [3, 7])
    second, _ = attack_images(build(name, 8), [14, 3])
    assert torch.equal(first.images[0], second.images[1])
    assert torch.equal(first.feature_loss[0], second.feature_loss[1])
    assert not torch.equal(first.images[0], first.images[1])


def test_lm_networks_start_from_per_target_seeds_and_normalise_each_channel():
    from pfo.attacks.lm import PerTargetConvNets
    from pfo.attacks.targets import target_generators

    def nets(index):
        return PerTargetConvNets(
            len(index), 16, 8, 4, 2, target_generators(0, torch.tensor(index)), torch.device("cpu")
        )

    a, b = nets([3, 7]), nets([3, 9])
    assert torch.equal(a.weights[0][0], b.weights[0][0]) and not torch.equal(a.weights[0][1], b.weights[0][1])
    assert len(a.parameters) == 2 * 4 + 2 * 3  # weights and biases of 4 convs, scale and shift of 3 hidden layers
    # A hidden layer's channels come out normalised over their own pixels (before the learnt scale and shift).
    x = a._conv(a.noise.flatten(0, 1).unsqueeze(0), 0)
    normed = torch.nn.functional.batch_norm(x, None, None, training=True)
    assert torch.allclose(normed.mean((0, 2, 3)), torch.zeros(2 * 8), atol=1e-5)
    assert torch.allclose(normed.var((0, 2, 3), unbiased=False), torch.ones(2 * 8), atol=1e-3)


# ----- GLASS's latent noise -----------------------------------------------------------------------------------------


class NoiseProbe(GLASS):
    """Records, at every step of the final optimisation (the one given a per-step ``adjust``), the noise the
    generator actually received: its input minus the optimised latent at that step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.noise: list[torch.Tensor] = []

    def optimize(self, variables, render, h_star, steps, lr, failed, constrain=None, adjust=None, name="stage"):
        if adjust is None:
            return super().optimize(variables, render, h_star, steps, lr, failed, constrain=constrain, name=name)
        latent = variables[0]

        def record(module, args, kwargs):
            self.noise.append((args[0] if args else kwargs["ws"]).detach() - latent.detach())

        handle = self.generator.synthesis.register_forward_pre_hook(record, with_kwargs=True)
        try:
            return super().optimize(variables, render, h_star, steps, lr, failed, constrain, adjust, name)
        finally:
            handle.remove()


def test_glass_latent_noise_decays_quadratically_to_zero():
    """NVlabs' projector schedule: at step t of T, noise of standard deviation
    spread(W) * noise_scale * max(0, 1 - t / (noise_ramp * T))^2, fresh at every step, none from noise_ramp * T on."""
    steps, ramp, scale = 20, 0.5, 0.05
    attack = NoiseProbe(
        tiny_victim(), tiny_generator(), n_init=4, init_chunk=4, candidates=2, short_steps=2, steps=steps,
        noise_scale=scale, noise_ramp=ramp, progress=False,
    )  # fmt: skip
    attack_images(attack, [3, 7])
    assert len(attack.noise) == steps
    spread = attack.w_spread()
    normalised = []
    for t, noise in enumerate(attack.noise):
        strength = spread * scale * max(0.0, 1 - t / (ramp * steps)) ** 2
        if strength == 0:
            assert torch.equal(noise, torch.zeros_like(noise)), f"noise left at step {t}"
            continue
        ratio = float(noise.std()) / strength
        assert 0.7 < ratio < 1.4, (t, ratio)  # 192 draws per step: a quadratic or linear slip shows here
        normalised.append(noise / strength)
    assert len(normalised) == ramp * steps  # steps 0..9 carry noise, 10..19 none
    pooled = torch.stack(normalised)
    assert float(pooled.std()) == pytest.approx(1.0, rel=0.08) and abs(float(pooled.mean())) < 0.1
    assert not torch.equal(normalised[0], normalised[1])  # fresh noise each step
    assert torch.equal(attack.noise[-1], torch.zeros_like(attack.noise[-1]))  # none at the end


# ----- the inverse network ----------------------------------------------------------------------------------------


def train_decoder(folder, defense=None, steps: int = 2) -> str:
    """A decoder trained for a few steps by the real trainer (so its file carries every record and its BatchNorm
    has running statistics of its own)."""
    import lightning as L

    from pfo.attacks import InverseNetworkTrainer
    from pfo.data import SyntheticImages

    torch.manual_seed(0)
    data = SyntheticImages(resolution=16, train_split="public", val_split=None, batch_size=8)
    L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=folder,
    ).fit(InverseNetworkTrainer(tiny_victim(), defense=defense, width=8), datamodule=data)  # fmt: skip
    return str(folder / "decoder.pt")


@pytest.fixture(scope="module")
def decoders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("decoders")
    return {
        "plain": train_decoder(root / "plain"),
        "noise": train_decoder(root / "noise", defense=GaussianNoise(0.1), steps=1),
    }


def test_neither_training_a_decoder_nor_attacking_warns_about_the_frozen_victim(tmp_path):
    """Lightning warns of modules in eval mode at the start of training; the frozen victim (and decoder) are so on
    purpose, in the decoder's trainer and in every attack, and a user should not read that warning as a fault."""
    import warnings

    from pfo.attacks import Targets
    from pfo.attacks.inverse_network import load_decoder
    from pfo.data import SyntheticImages

    def eval_mode_warnings(run) -> list:  # each in its own context: a filter one adds does not reach the other
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
        return [w for w in caught if "eval mode at the start of training" in str(w.message)]

    path = str(tmp_path / "decoder" / "decoder.pt")
    assert not eval_mode_warnings(lambda: train_decoder(tmp_path / "decoder", steps=1))
    targets = Targets(data=SyntheticImages(resolution=16), count=2, batch_size=2)

    def attack() -> None:  # built inside the context, as a run builds it before training
        quiet_trainer(tmp_path / "attack").fit(InverseNetwork(tiny_victim(), decoder=path), datamodule=targets)

    assert not eval_mode_warnings(attack)
    assert load_decoder(path)[1]["split_point"] == "layer1"  # it did train, and saved its decoder
    assert len(list((tmp_path / "attack").rglob("targets/*.pt"))) == 2  # and the attack did run


def test_the_inverse_network_refuses_a_decoder_made_for_another_split_point_defense_or_victim(decoders, tmp_path):
    from pfo.artifacts import ArtifactError
    from pfo.attacks.inverse_network import load_decoder, save_decoder

    plain, noise = decoders["plain"], decoders["noise"]
    InverseNetwork(tiny_victim(), decoder=plain)  # made for it: accepted
    with pytest.raises(ArtifactError, match="features at 'layer1'.*splits the victim at 'layer2'.*this split point"):
        InverseNetwork(tiny_victim(), split_point="layer2", decoder=plain)
    with pytest.raises(ArtifactError, match="defense none.*GaussianNoise.*same defense"):
        InverseNetwork(tiny_victim(), decoder=plain, defense=GaussianNoise(0.1))
    with pytest.raises(ArtifactError, match=r"GaussianNoise\(scale=0.1\).*GaussianNoise\(scale=0.2\)"):
        InverseNetwork(tiny_victim(), decoder=noise, defense=GaussianNoise(0.2))
    InverseNetwork(tiny_victim(), decoder=noise, defense=GaussianNoise(0.1))

    # The victim: by its weights, whatever file they come from.
    InverseNetwork(str(save_victim(tiny_victim(), tmp_path / "victim.pt")), decoder=plain)
    torch.manual_seed(5)
    other = ResNet(depth=18, num_classes=4, stem="cifar", input_size=16, split_point="layer1").eval()
    with pytest.raises(ArtifactError, match="another victim.*train a decoder for this victim"):
        InverseNetwork(other, decoder=plain)
    # A decoder file from before the record: accepted with a warning that nothing could be checked.
    decoder, meta = load_decoder(plain)
    old = save_decoder(decoder, tmp_path / "old.pt", split_point=meta["split_point"], defense=meta["defense"])
    with pytest.warns(UserWarning, match="does not record which victim"):
        InverseNetwork(other, decoder=str(old))


class DecoderModeProbe(InverseNetwork):
    """Records, inside every ``reconstruct`` of a real run, whether any decoder module is in training mode."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.modes: list[bool] = []

    def reconstruct(self, h_star, index):
        self.modes.append(any(m.training for m in self.decoder.modules()))
        return super().reconstruct(h_star, index)


def test_the_inverse_networks_decoder_stays_in_eval_mode_and_targets_stay_independent(decoders, tmp_path):
    import lightning as L

    from pfo.attacks import AttackOutputs, Targets
    from pfo.attacks.inverse_network import load_decoder
    from pfo.data import SyntheticImages

    decoder, _ = load_decoder(decoders["plain"])
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in decoder.modules())
    attack = DecoderModeProbe(tiny_victim(), decoder=decoders["plain"])
    attack.train()  # what a loop does to its system (Lightning 2.6 keeps the modes it finds; others call train())
    targets = Targets(data=SyntheticImages(resolution=16), split="test", count=4, batch_size=2)
    L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=tmp_path,
    ).fit(attack, datamodule=targets)  # fmt: skip
    assert attack.training and attack.modes == [False, False]  # Lightning trained the system, not the decoder
    results = {i: AttackOutputs(tmp_path).read_target(i)["reconstruction"] for i in (0, 4, 8, 12)}
    # Each target's answer is the decoder's output with its running statistics, for that target alone (equal up to
    # the rounding of a batch of one against a batch of two); the batch's own statistics would give another.
    test = SyntheticImages(resolution=16).dataset("test")
    images = torch.stack([test[i]["image"] for i in results])
    with torch.no_grad():
        h = attack.victim.forward_head(images)
        alone = torch.cat([decoder(h[i : i + 1]) for i in range(len(h))]).clamp(0, 1)
        batch_statistics = copy.deepcopy(decoder).train()(h).clamp(0, 1)
    torch.testing.assert_close(torch.stack(list(results.values())), alone, atol=1e-6, rtol=0)
    assert (batch_statistics - alone).abs().max() > 1e-3
    first, _ = attack_images(attack, [3, 7])
    second, _ = attack_images(attack, [14, 3])
    assert torch.equal(first.images[0], second.images[1]) and not torch.equal(first.images[0], first.images[1])
