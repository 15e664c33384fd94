"""Any torchvision or timm classifier cut at any node of its traced graph.

torch.fx traces the network into its operations in execution order, with torchvision's ``NodePathTracer`` (the
tracer behind ``torchvision.models.feature_extraction``; for timm networks with timm's own leaf modules and
functions, as ``timm.layers.get_graph_node_names`` does). Every operation is named as ``get_graph_node_names``
names it (``layer3.1.relu_2``), and a module's name stands for its last operation, as in
``create_feature_extractor`` (``layer3.1`` is ``layer3.1.relu_2``, ``layer3`` is the last block's output).

Cutting after operation k gives a head that runs the operations up to k and returns k's tensor, and a tail that
starts from that tensor and runs the rest. The cut is clean only when the tail needs nothing else the head
computed: a skip connection that leaves before k and joins after it (the input of a residual block, cut inside
the block) crosses it, and such a node is refused with the nearest clean nodes named. Constants (parameters,
buffers and what is computed from them alone) do not count: the tail computes them itself.

Both halves run the traced operations of the whole network in its order, so ``tail(head(x))`` equals the
network's own output bitwise (``tests/test_any_model.py`` checks it per architecture and node).
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torchvision.models.feature_extraction import NodePathTracer

from pfo.models.pretrained import load_pretrained_state, load_weights_keeping_classifier
from pfo.models.split import SplitModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_COMPUTE = ("call_module", "call_function", "call_method")
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _torchvision_leaf_modules() -> list[type]:
    """torchvision's ops (``StochasticDepth``, ``FrozenBatchNorm2d``, ...) stay single nodes, as in torchvision's
    own feature extraction."""
    return [m for _, m in inspect.getmembers(torchvision.ops, inspect.isclass) if issubclass(m, nn.Module)]


def tracer_arguments(timm_network: bool = False) -> dict[str, Any]:
    """``NodePathTracer`` arguments: torchvision's defaults, plus timm's registered leaves for a timm network."""
    arguments: dict[str, Any] = {
        "autowrap_modules": (math, torchvision.ops),
        "leaf_modules": _torchvision_leaf_modules(),
    }
    if timm_network:
        from timm.layers import get_notrace_functions, get_notrace_modules

        arguments["leaf_modules"] += get_notrace_modules()
        arguments["autowrap_functions"] = tuple(get_notrace_functions())
    return arguments


def _is_in_place(node: fx.Node) -> bool:
    """An operation that overwrites its first argument (``x.add_(y)``, ``torch.relu_(x)``)."""
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return node.op in ("call_method", "call_function") and name.endswith("_") and not name.startswith("__")


class TracedNetwork:
    """A network's eval-mode graph, the name of every node, and where it can be cut.

    ``net`` is traced in eval mode, and again in training mode only to learn whether that runs the same program.
    Its modules lose their ``inplace`` flags first (same results), so a tail never overwrites the features the
    client sent.
    """

    def __init__(self, net: nn.Module, input_size: int, timm_network: bool = False, label: str = "") -> None:
        self.label = label or type(net).__name__
        for module in net.modules():
            if isinstance(getattr(module, "inplace", None), bool):
                module.inplace = False
        training = net.training
        try:
            self.graph, self.names = self._trace(net.eval(), timm_network, self.label)
            train_graph, _ = self._trace(net.train(), timm_network, self.label)
            # Python branches on ``self.training`` are frozen into a trace: the eval graph is right for training
            # only when the training-mode trace is the same program.
            self.same_in_training = train_graph.python_code("self").src == self.graph.python_code("self").src
            net.eval()
            with torch.no_grad():  # records each node's output shape (``tensor_meta``) on a blank image
                ShapeProp(fx.GraphModule(net, self.graph)).propagate(torch.zeros(1, 3, input_size, input_size))
        finally:
            net.train(training)
        self._analyse(net)

    @staticmethod
    def _trace(net: nn.Module, timm_network: bool, label: str) -> tuple[fx.Graph, dict[fx.Node, str]]:
        tracer = NodePathTracer(**tracer_arguments(timm_network))
        try:
            graph = tracer.trace(net)
        except Exception as error:  # data-dependent control flow, untraceable calls
            raise ValueError(
                f"torch.fx cannot trace {label}, so it cannot be cut by node name ({type(error).__name__}: "
                f"{error}); wrap the part the client runs as pfo.models.Head instead"
            ) from error
        for node in graph.nodes:  # functional in-place flags (``F.relu(x, inplace=True)``)
            if node.kwargs.get("inplace") is True:
                node.kwargs = {**node.kwargs, "inplace": False}
        return graph, dict(tracer.node_to_qualname)

    def _analyse(self, net: nn.Module) -> None:
        nodes = list(self.graph.nodes)
        self.nodes = nodes
        self.order = {node: i for i, node in enumerate(nodes)}
        # Nodes computed from the image (the first argument). The rest are constants a tail recomputes, among them
        # further forward arguments, which keep their defaults (timm's ``attn_mask=None``).
        image = nodes[0]
        self.from_input: set[fx.Node] = {image}
        for node in nodes[1:]:
            if any(a in self.from_input for a in node.all_input_nodes):
                self.from_input.add(node)
        self.last_use = {n: max((self.order[u] for u in n.users), default=self.order[n]) for n in nodes}
        # crossings[k]: how many nodes before k are still needed after k (a sweep over each node's live range).
        change = [0] * (len(nodes) + 1)
        for node in self.from_input:
            start, end = self.order[node] + 1, self.last_use[node]
            if start < end:
                change[start] += 1
                change[end] -= 1
        crossings, running = [], 0
        for delta in change[:-1]:
            running += delta
            crossings.append(running)
        self.crossings = crossings
        # A module's name stands for its last node, as in create_feature_extractor.
        self.last_of: dict[str, fx.Node] = {}
        for node in nodes:
            parts = self.names[node].split(".") if node in self.names else []
            for depth in range(1, len(parts) + 1):
                self.last_of[".".join(parts[:depth])] = node
        modules = dict(net.named_modules())
        self.canonical = {n: self._canonical_name(n, modules) for n in nodes if n in self.names}
        self.split_points = [self.canonical[n] for n in nodes if self.why_not(n) is None]
        self.by_name = {self.canonical[n]: n for n in nodes if n in self.canonical}

    def _canonical_name(self, node: fx.Node, modules: dict[str, nn.Module]) -> str:
        """The name a node is listed under: the shortest name that means it, other than a plain container's
        (``layer1.2`` rather than ``layer1``, ``features.12`` rather than ``features``, ``blocks.11`` rather than
        ``blocks``: the container's name would hide which of its children ends there)."""
        parts = self.names[node].split(".")
        prefixes = [".".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
        aliases = [p for p in prefixes if self.last_of.get(p) is node]
        named = [p for p in aliases if type(modules.get(p)) not in _CONTAINERS]
        return (named or aliases or [self.names[node]])[0]

    def name(self, node: fx.Node) -> str:
        return self.canonical.get(node, node.name)

    def why_not(self, node: fx.Node) -> str | None:
        """Why the network cannot be cut after ``node`` (None when it can)."""
        if node.op == "placeholder":
            return "it is the network's input"
        if node.op not in _COMPUTE or node not in self.from_input:
            return "it does not depend on the input image"
        if not isinstance(node.meta.get("tensor_meta"), TensorMetadata):
            return "its output is not one tensor"
        if all(user.op == "output" for user in node.users):
            return "it is the network's output: nothing would be left for the server"
        if self.crossings[self.order[node]]:
            needed = [self.name(n) for n in self.nodes if n in self.from_input and self._crosses(n, node)]
            return (
                "a skip connection crosses it: the server's part would also need "
                f"{', '.join(needed[:4])}{' ...' if len(needed) > 4 else ''} besides the tensor sent"
            )
        return None

    def _crosses(self, node: fx.Node, cut: fx.Node) -> bool:
        return self.order[node] < self.order[cut] < self.last_use[node]

    def resolve(self, split_point: str) -> fx.Node:
        """The node ``split_point`` names (a node's or a module's name); refuses names that cannot be a cut."""
        node = self.by_name.get(split_point) or self.last_of.get(split_point)
        if node is None or node not in self.names:
            close = difflib.get_close_matches(split_point, self.split_points, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(
                f"unknown split point {split_point!r} for {self.label}{hint}; valid split points: "
                f"{', '.join(self.split_points)}"
            )
        reason = self.why_not(node)
        if reason is not None:
            position = self.order[node]
            before = [n for n in self.nodes[:position] if self.canonical.get(n) in self.split_points]
            after = [n for n in self.nodes[position + 1 :] if self.canonical.get(n) in self.split_points]
            sides = ((before[-1:], "before"), (after[:1], "after"))
            nearest = [f"{self.name(n[0])!r} ({side})" for n, side in sides if n]
            raise ValueError(
                f"{self.label} cannot be split at {split_point!r}: {reason}; the nearest clean split points are "
                f"{' and '.join(nearest) or 'none'} (all: {', '.join(self.split_points)})"
            )
        return node

    def halves(self, root: nn.Module, cut: fx.Node) -> tuple[fx.GraphModule, fx.GraphModule]:
        """Two graph modules over ``root``'s own submodules: the operations up to ``cut`` returning its tensor,
        and the operations after it, taking that tensor."""
        head_graph, env = fx.Graph(), {}
        for node in self.nodes[: self.order[cut] + 1]:
            env[node] = head_graph.node_copy(node, lambda n: env[n])
        head_graph.output(env[cut])

        tail_graph, env = fx.Graph(), {}
        features = tail_graph.placeholder("features")
        env[cut] = features
        if any(_is_in_place(user) and user.args[:1] == (cut,) for user in cut.users):
            env[cut] = tail_graph.call_method("clone", (features,))

        def copy(node: fx.Node) -> fx.Node:
            if node not in env:  # a constant computed before the cut: recompute it here
                for argument in node.all_input_nodes:
                    copy(argument)
                env[node] = tail_graph.node_copy(node, lambda n: env[n])
            return env[node]

        for node in self.nodes[self.order[cut] + 1 :]:
            copy(node)
        return _pruned(root, head_graph, "GraphHead"), _pruned(root, tail_graph, "GraphTail")


def _pruned(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """A graph module without the operations the output does not need (pruned before the module is built, so
    its code is generated once)."""
    graph.owning_module = root  # what the purity check of module calls looks into
    graph.eliminate_dead_code()
    return fx.GraphModule(root, graph, name)


class _EvalOnly(nn.Module):
    """A half of a network whose training-mode program differs from the traced one (drop-path branches, auxiliary
    outputs): it runs only while the network is in eval mode, which is all an attack needs."""

    def __init__(self, half: fx.GraphModule, net: nn.Module, label: str) -> None:
        super().__init__()
        self.__dict__["half"], self.__dict__["net"], self.label = half, net, label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net.training:
            raise RuntimeError(
                f"{self.label} runs other code in training mode (stochastic depth or auxiliary outputs) than the "
                f"traced graph; train it without them (e.g. `model_kwargs: {{drop_path_rate: 0}}`) or elsewhere, "
                f"and attack it here in eval mode"
            )
        return self.half(x)


class GraphSplitModel(SplitModel):
    """A split model cut anywhere in a traced network (base of ``TorchvisionModel`` and ``TimmModel``).

    ``split_points`` lists every clean cut in execution order, each under one name (see
    ``TracedNetwork._canonical_name``); ``split_point`` accepts any node or module name that means a clean cut
    (``layer3`` and ``layer3.5`` are the same cut of a ResNet-50) and is kept as given.
    """

    def __init__(
        self,
        net: nn.Module,
        split_point: str | None,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        input_size: int,
        num_classes: int,
        timm_network: bool = False,
        label: str = "",
    ) -> None:
        self._traced = TracedNetwork(net, input_size, timm_network, label)
        self._trace_args = (input_size, timm_network, label)
        split_points = self._traced.split_points
        if split_point is None:  # the middle of the network
            split_point = split_points[len(split_points) // 2]
        super().__init__(net, [], split_points, split_point, mean, std, input_size, num_classes)

    def _resolve_split_point(self, split_point: str) -> str:
        self._traced.resolve(split_point)  # refuses what cannot be a cut
        return split_point

    def _halves(self, split_point: str) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
        traced = self._traced
        head, tail = traced.halves(self.net, traced.resolve(split_point))
        if not traced.same_in_training:
            head, tail = _EvalOnly(head, self.net, traced.label), _EvalOnly(tail, self.net, traced.label)
        return [("graph_head", head)], [("graph_tail", tail)]

    def _apply(self, fn, *args, **kwargs):
        """After a move (device, dtype, memory format) cut again: the halves hold the buffers they read."""
        result = super()._apply(fn, *args, **kwargs)
        if "_traced" in self.__dict__:
            self._cut(self._split_point)
        return result

    def __getstate__(self) -> dict:
        """Pickle (and deepcopy) the network only: the graph and halves are rebuilt from it."""
        state = dict(self.__dict__)
        for key in ("_traced", "head", "tail"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._traced = TracedNetwork(self.net, *self._trace_args)
        self._cut(self._split_point)


def _local_file(value: str, option: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"`{option}`: no weights file at {path}; give the path of a local weights file")
    return path


class TorchvisionModel(GraphSplitModel):
    """Any torchvision classifier (``torchvision.models.list_models(module=torchvision.models)``) cut at any node.

    Example: ``TorchvisionModel("resnet50", split_point="layer3", weights="/models/resnet50.pth")`` is an ImageNet
    ResNet-50 whose client sends the output of ``layer3``.
    """

    def __init__(
        self,
        name: str = "resnet50",
        split_point: str | None = None,
        num_classes: int = 1000,
        input_size: int = 224,
        weights: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        """
        Args:
            name: a torchvision classification model (``resnet50``, ``mobilenet_v3_small``, ``vit_b_16``, ...).
            split_point: the node or module whose output the client sends (``layer3``, ``layer3.1``,
                ``features.7``); ``split_points`` lists the valid ones. Default: the middle one.
            num_classes: classifier outputs.
            input_size: side of the square input images.
            weights: null for random weights; a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V2``),
                downloaded or found in torch's cache; or the path of a local state-dict file. With other than
                the weights' number of classes, the classifier stays fresh.
            model_kwargs: further arguments of the torchvision builder (``image_size`` for ``vit_b_16``, ...).
            mean: per-channel input mean (inputs are in [0, 1]); default ImageNet's, as torchvision's weights use.
            std: per-channel input standard deviation.
        """
        available = torchvision.models.list_models(module=torchvision.models)
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3)
            raise ValueError(
                f"{name!r} is not a torchvision classification model{f' (did you mean {close})' if close else ''}; "
                f"torchvision.models.list_models(module=torchvision.models) lists them"
            )
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **(model_kwargs or {}))
        if weights is not None:
            state = load_pretrained_state(*self._weights_source(name, weights), option="weights")
            load_weights_keeping_classifier(net, state, num_classes, f"torchvision {name}")
        label = f"torchvision {name}"
        super().__init__(net, split_point, tuple(mean), tuple(std), input_size, num_classes, label=label)
        self._record_config(
            name=name,
            num_classes=num_classes,
            input_size=input_size,
            weights=None,  # the weights travel in the victim file
            model_kwargs=dict(model_kwargs or {}),
            mean=list(mean),
            std=list(std),
        )

    @staticmethod
    def _weights_source(name: str, weights: str) -> tuple[bool | str, Callable[[], dict[str, torch.Tensor]] | None]:
        """``(local file, None)``, or ``(True, a function fetching torchvision's named weights)``."""
        names = [w.name for w in torchvision.models.get_model_weights(name)]
        if weights != "DEFAULT" and weights not in names:
            if not Path(weights).expanduser().is_file():
                raise FileNotFoundError(
                    f"`weights`: {weights!r} is neither a local weights file nor one of torchvision's "
                    f"weights for {name} (DEFAULT, {', '.join(names)})"
                )
            return weights, None
        enum = torchvision.models.get_model_weights(name)
        chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
        return True, lambda: chosen.get_state_dict(progress=True)


class TimmModel(GraphSplitModel):
    """Any timm classifier (``timm.list_models()``) cut at any node.

    Example: ``TimmModel("convnext_atto", split_point="stages.2.blocks.1", pretrained="/models/convnext.pth")``.
    """

    def __init__(
        self,
        name: str = "convnext_atto",
        split_point: str | None = None,
        num_classes: int = 1000,
        input_size: int | None = None,
        pretrained: bool | str = False,
        model_kwargs: dict[str, Any] | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ) -> None:
        """
        Args:
            name: a timm model name, optionally with its weights tag (``convnext_atto.d2_in1k``).
            split_point: the node or module whose output the client sends (``stages.2.blocks.1``, ``blocks.5``);
                ``split_points`` lists the valid ones. Default: the middle one.
            num_classes: classifier outputs.
            input_size: side of the square input images; default the model's pretrained configuration's. Models
                with a fixed input size (ViTs) are built for it.
            pretrained: ``True`` for timm's weights (downloaded, or found in the Hugging Face cache), or the path
                of a local weights file (timm adapts the classifier and position embedding as needed).
            model_kwargs: further timm arguments (``drop_path_rate``, ``depth``, ...).
            mean: input mean; default the model's pretrained configuration's.
            std: input standard deviation; default the model's pretrained configuration's.
        """
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            raise ValueError(
                f"{name!r} is not a timm model{f' (did you mean {close})' if close else ''}; timm.list_models() "
                f"lists them"
            )
        cfg = timm.models.get_pretrained_cfg(name)
        size = input_size or (cfg.input_size[-1] if cfg is not None else 224)
        kwargs: dict[str, Any] = dict(num_classes=num_classes, **(model_kwargs or {}))
        if cfg is not None and cfg.fixed_input_size:
            kwargs.setdefault("img_size", size)
        if isinstance(pretrained, str):
            kwargs["pretrained_cfg_overlay"] = {"file": str(_local_file(pretrained, "pretrained"))}
        try:
            net = timm.create_model(name, pretrained=bool(pretrained), **kwargs)
        except Exception as error:
            if pretrained is True:
                raise RuntimeError(
                    f"could not fetch timm's pretrained {name} (no network?); download the weights elsewhere and "
                    f"give the file's path as `pretrained: /path/to/weights` ({type(error).__name__}: {error})"
                ) from error
            raise
        net_cfg = getattr(net, "pretrained_cfg", None) or {}
        mean = tuple(mean or net_cfg.get("mean", IMAGENET_MEAN))
        std = tuple(std or net_cfg.get("std", IMAGENET_STD))
        label = f"timm {name}"
        super().__init__(net, split_point, mean, std, size, num_classes, timm_network=True, label=label)
        self._record_config(
            name=name,
            num_classes=num_classes,
            input_size=size,
            pretrained=False,  # the weights travel in the victim file
            model_kwargs=dict(model_kwargs or {}),
            mean=list(mean),
            std=list(std),
        )
