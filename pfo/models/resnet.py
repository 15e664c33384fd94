"""ResNets (torchvision) as split models, with the ImageNet stem or the CIFAR stem (3x3 conv, no max-pool)."""

from __future__ import annotations

from typing import Literal

import torch
import torchvision
from torch import nn

from pfo.models.pretrained import load_pretrained_state
from pfo.models.split import SplitModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_DEPTHS = {18: "resnet18", 34: "resnet34", 50: "resnet50"}
_TORCHVISION_WEIGHTS = {18: "ResNet18_Weights", 34: "ResNet34_Weights", 50: "ResNet50_Weights"}


class ResNet(SplitModel):
    """torchvision ResNet-18/34/50 split after one of its top-level modules.

    Split points, in execution order: ``conv1``, ``bn1``, ``relu``, ``maxpool`` (ImageNet stem only),
    ``layer1`` .. ``layer4`` (the names GLASS uses).
    """

    def __init__(
        self,
        depth: int = 18,
        num_classes: int = 1000,
        stem: Literal["imagenet", "cifar"] = "imagenet",
        split_point: str = "layer2",
        input_size: int = 224,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        pretrained: bool | str = False,
    ) -> None:
        """
        Args:
            depth: 18, 34 or 50.
            num_classes: classifier outputs.
            stem: ``imagenet`` (7x7 stride-2 conv and max-pool) or ``cifar`` (3x3 stride-1 conv, no max-pool).
            split_point: the module whose output the client sends.
            input_size: side of the square input images.
            mean: per-channel input mean (inputs are in [0, 1]).
            std: per-channel input standard deviation.
            pretrained: ``True`` for torchvision's ImageNet weights (downloaded, or found in torch's cache), or
                the path of a local weights file; the classifier and, for the CIFAR stem, ``conv1`` stay fresh.
        """
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"ResNet stem must be 'imagenet' or 'cifar', got {stem!r}")
        net = getattr(torchvision.models, _DEPTHS[depth])(weights=None, num_classes=num_classes)
        net.relu = nn.ReLU()  # torchvision's is in place: split at bn1, the tail would overwrite the features sent
        if stem == "cifar":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        if pretrained:
            state = load_pretrained_state(pretrained, lambda: self._torchvision_state(depth))
            load_pretrained_state_into(net, state, fresh=("fc.", "conv1.") if stem == "cifar" else ("fc.",))
        stages = [
            ("conv1", net.conv1),
            ("bn1", net.bn1),
            ("relu", net.relu),
            ("maxpool", net.maxpool),
            ("layer1", net.layer1),
            ("layer2", net.layer2),
            ("layer3", net.layer3),
            ("layer4", net.layer4),
            ("avgpool", net.avgpool),
            ("flatten", nn.Flatten(1)),
            ("fc", net.fc),
        ]
        split_points = [n for n, m in stages[:8] if not isinstance(m, nn.Identity)]
        super().__init__(net, stages, split_points, split_point, mean, std, input_size, num_classes)
        self._record_config(
            depth=depth,
            num_classes=num_classes,
            stem=stem,
            input_size=input_size,
            mean=list(mean),
            std=list(std),
            pretrained=False,
        )

    @staticmethod
    def _torchvision_state(depth: int) -> dict[str, torch.Tensor]:
        weights = getattr(torchvision.models, _TORCHVISION_WEIGHTS[depth]).IMAGENET1K_V1
        return weights.get_state_dict(progress=True)


def load_pretrained_state_into(
    net: nn.Module, state: dict[str, torch.Tensor], fresh: tuple[str, ...] = ("fc.",)
) -> None:
    """Load every weight whose name and shape match; only the tensors under ``fresh`` (the classifier, for other
    classes, and a re-shaped stem) may differ and keep their fresh initialisation. Any other difference means a
    file for another architecture (a ResNet-34 or -50 file shares many names and shapes with a ResNet-18)."""
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}

    def counts(key: str) -> bool:  # BatchNorm's counter is absent from older torchvision files
        return not key.startswith(fresh) and not key.endswith("num_batches_tracked")

    missing = [k for k in own if k not in state and counts(k)]
    extra = [k for k in state if k not in own and counts(k)]
    reshaped = [k for k in state if k in own and k not in usable and counts(k)]
    if missing or extra or reshaped:
        raise ValueError(
            f"the pretrained weights do not fit this {type(net).__name__}: {len(missing)} tensors missing from the "
            f"file (e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]}), {len(reshaped)} of another "
            f"shape (e.g. {reshaped[:3]}): they are for another architecture"
        )
    net.load_state_dict(usable, strict=False)
