"""Vision Transformers (timm) as split models.

A timm ViT runs ``patch_embed -> _pos_embed -> patch_drop -> norm_pre -> blocks -> norm -> forward_head``. The
``patch_embed`` split point sends the tokens after the position embedding (and class token); ``blocks.K`` sends
the tokens after block K. ``_pos_embed`` is private to timm, hence the pinned version and the equivalence test.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from pfo.models.split import SplitModel


class _Embed(nn.Module):
    """Patch embedding, position embedding and pre-norm: everything before the first block."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.__dict__["vit"] = vit  # a view onto modules registered in the SplitModel's ``net``

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))


class _Head(nn.Module):
    """Final norm, pooling and classifier."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.__dict__["vit"] = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self.vit.norm(x))


class ViT(SplitModel):
    """Any timm Vision Transformer (``vit_base_patch16_224`` is ViT-B/16; ``test_vit`` is a tiny one for tests)."""

    def __init__(
        self,
        variant: str = "vit_base_patch16_224",
        num_classes: int = 1000,
        img_size: int = 224,
        patch_size: int = 16,
        split_point: str = "blocks.5",
        pretrained: bool | str = False,
        model_kwargs: dict[str, Any] | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ) -> None:
        """
        Args:
            variant: timm model name.
            num_classes: classifier outputs.
            img_size: side of the square input images.
            patch_size: side of a patch.
            split_point: ``patch_embed`` or ``blocks.K``.
            pretrained: ``True`` for timm's ImageNet weights (downloaded), or the path of a local weights file
                (timm resamples the position embedding and resets the classifier as needed).
            model_kwargs: extra timm arguments (``depth``, ``embed_dim``, ``num_heads``, ...).
            mean: input mean; default the variant's pretrained config.
            std: input standard deviation; default the variant's pretrained config.
        """
        kwargs = dict(num_classes=num_classes, img_size=img_size, patch_size=patch_size, **(model_kwargs or {}))
        if isinstance(pretrained, str):
            kwargs["pretrained_cfg_overlay"] = {"file": pretrained}
        try:
            net = timm.create_model(variant, pretrained=bool(pretrained), **kwargs)
        except RuntimeError as error:
            if pretrained is True:
                raise RuntimeError(
                    f"could not fetch timm's pretrained {variant} (no network?); download the weights elsewhere "
                    f"and give the file's path as `pretrained: /path/to/weights` ({error})"
                ) from error
            raise
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        mean = tuple(mean or cfg.get("mean", (0.485, 0.456, 0.406)))
        std = tuple(std or cfg.get("std", (0.229, 0.224, 0.225)))
        blocks = [(f"blocks.{i}", block) for i, block in enumerate(net.blocks)]
        stages = [("patch_embed", _Embed(net)), *blocks, ("head", _Head(net))]
        split_points = [name for name, _ in stages[:-1]]
        super().__init__(net, stages, split_points, split_point, mean, std, img_size, num_classes)
        self._record_config(
            variant=variant,
            num_classes=num_classes,
            img_size=img_size,
            patch_size=patch_size,
            pretrained=False,
            model_kwargs=dict(model_kwargs or {}),
            mean=list(mean),
            std=list(std),
        )
