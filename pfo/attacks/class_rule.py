"""The class a class-conditional prior is conditioned on, chosen per target.

A conditional generator (``c_dim > 0``: NVlabs' CIFAR-10 StyleGAN2-ADA network, the StyleGAN-XL priors of GLASS
and DRAG) renders nothing until it is told a class, so before its initialisation an attack picks one class per
target with a :class:`ClassRule`:

- ``"victim"``: the class the victim itself predicts from the observed features, ``tail(h*).argmax(1)``. Where
  the split leaves a tail, the server runs it on what the client sent to answer the client: the prediction is
  something the server computes anyway, so using it gives the attacker nothing the threat model does not
  already give. It is computed from the features the attacker sees (defended, where a defense runs). The
  victim's labels must name the prior's classes: the same number of classes in the same order, or a
  ``class_map`` from victim class to prior class; otherwise the rule refuses and says what to use instead.
- ``"search"``: without a tail (a head-only victim, ``len(victim.tail) == 0``) there is no prediction, so every
  class of the prior is tried inside the initialisation: per class, ``search_latents`` latents are drawn from the
  target's own generator, rendered and scored with the attack loss, and the class of the best candidate wins.
  With a tail, ``search_top`` limits the search to the victim's ``k`` most likely classes.
- an int: that class for every target.
- ``"auto"`` (the default): ``"victim"`` where the split leaves a tail, ``"search"`` where it does not.

Each target's class depends on that target alone: the victim's prediction is computed one target at a time, and
the search draws from a generator seeded from (run seed, target index), like
:func:`pfo.attacks.targets.target_generators` but a stream of its own, so the attack's initial latents stay what
they would be without the search. A target's class is then the same whatever its batch neighbours, order, shard
or batch size. :meth:`ClassRule.choose` returns the one-hot vectors the generator reads and the class indices,
which each target records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, Protocol

import torch
from torch import Tensor

from pfo.data.splits import unit_hash
from pfo.models.split import has_tail

RULES = ("auto", "victim", "search")
ClassRuleName = Literal["auto", "victim", "search"]


class ConditionalPrior(Protocol):
    """What the search needs from a prior (:class:`pfo.models.prior.Prior` has it): latents drawn from a given
    generator, mapped with a class vector, rendered in the range the attack loss expects."""

    c_dim: int

    def sample_z(self, count: int, generator: torch.Generator) -> Tensor: ...

    def map(self, z: Tensor, c: Tensor | None = None, truncation: float = 1.0) -> Tensor: ...

    def render(self, latent: Tensor) -> Tensor: ...


class ClassChoice(NamedTuple):
    """The classes chosen for a batch of targets."""

    c: Tensor  # [N, c_dim] one-hot class vectors, what the generator's mapping reads
    classes: Tensor  # [N] prior class indices (int64), what each target records
    rule: str  # the rule that chose them: "victim", "search" or "fixed"


def one_hot(classes: Tensor, c_dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot class vectors [N, c_dim] for class indices [N]."""
    return torch.nn.functional.one_hot(classes.long(), c_dim).to(dtype)


def class_search_seed(seed: int, index: int) -> int:
    """The seed of one target's class-search latents, from (run seed, target index)."""
    return int(unit_hash(f"pfo-class-search-{seed}", str(int(index))) * 2**62)


def _num_classes(victim) -> int:
    return int(victim.num_classes)


@torch.no_grad()
def victim_logits(victim, h_star: Tensor) -> Tensor:
    """``tail(h*)`` [N, num_classes], one target at a time (so no target's logits depend on its neighbours)."""
    return torch.cat([victim.tail(h.unsqueeze(0)) for h in h_star])


def _to_prior_classes(victim_classes: Tensor, class_map: Sequence[int] | None) -> Tensor:
    if class_map is None:
        return victim_classes
    return torch.as_tensor(list(class_map), dtype=torch.long, device=victim_classes.device)[victim_classes]


def victim_classes(victim, h_star: Tensor, class_map: Sequence[int] | None = None) -> Tensor:
    """The victim's prediction from the observed features, as prior classes [N]: ``tail(h*).argmax(1)``, through
    ``class_map`` (victim class -> prior class) when given."""
    return _to_prior_classes(victim_logits(victim, h_star).argmax(1), class_map)


@torch.no_grad()
def search_classes(
    prior: ConditionalPrior,
    h_star: Tensor,
    index: Tensor,
    seed: int,
    score: Callable[[Tensor, Tensor], Tensor],
    *,
    candidates: Sequence[Sequence[int]] | None = None,
    latents_per_class: int = 4,
    truncation: float = 1.0,
    chunk: int = 64,
) -> Tensor:
    """Per target, the prior class whose renderings best explain its features [N].

    For target ``i``, ``latents_per_class`` latents per class are drawn from its own class-search generator (the
    ``j``-th block of draws always belongs to class ``j``, so a class's candidates do not depend on which other
    classes are searched), mapped with that class (``truncation`` as in the initialisation), rendered, and scored
    by ``score(images, h)`` (the attack loss per sample, ``h`` the target's features repeated). The class of the
    lowest score wins; ties go to the earlier candidate, failed (non-finite) scores rank last.

    ``candidates[i]`` lists the classes searched for target ``i`` (default: every class of the prior, in order).
    """
    c_dim = int(prior.c_dim)
    chosen = []
    for i, (target, h) in enumerate(zip(index, h_star)):
        classes = list(range(c_dim)) if candidates is None else [int(j) for j in candidates[i]]
        gen = torch.Generator().manual_seed(class_search_seed(seed, int(target)))
        z = prior.sample_z(c_dim * latents_per_class, gen)
        z = z.view(c_dim, latents_per_class, *z.shape[1:])[classes].flatten(0, 1).to(h.device)
        labels = torch.tensor(classes, device=h.device).repeat_interleave(latents_per_class)
        c = one_hot(labels, c_dim, z.dtype)
        scores = []
        for start in range(0, len(z), chunk):
            latent = prior.map(z[start : start + chunk], c[start : start + chunk], truncation=truncation)
            images = prior.render(latent)
            scores.append(score(images, h.expand(len(images), *h.shape)))
        scores = torch.nan_to_num(torch.cat(scores), nan=float("inf"), neginf=float("inf"))
        best = scores.view(len(classes), latents_per_class).amin(1)
        chosen.append(classes[int(best.argmin())])
    return torch.tensor(chosen, dtype=torch.long, device=h_star.device)


class ClassRule:
    """Which class a conditional prior renders for each target (see the module docstring for the rules and why).

    Build it with the attack's settings, call :meth:`check` when the attack is built (every error names its fix)
    and :meth:`choose` once per batch, before the initial latents are drawn.
    """

    def __init__(
        self,
        rule: ClassRuleName | int = "auto",
        class_map: list[int] | None = None,
        search_latents: int = 4,
        search_top: int | None = None,
        chunk: int = 64,
    ) -> None:
        """
        Args:
            rule: ``auto`` (the victim's prediction where the split leaves a tail, else ``search``), ``victim``,
                ``search``, or a class index of the prior used for every target.
            class_map: the victim's classes as prior classes (entry ``v`` is the prior class of victim class
                ``v``), for the victim's prediction when the two label spaces differ; null: the same classes in
                the same order.
            search_latents: latents per class scored by the search.
            search_top: search only the victim's ``k`` most likely classes (needs a tail); null: every class of
                the prior.
            chunk: candidates rendered at once by the search.
        """
        if isinstance(rule, bool) or not (isinstance(rule, int) or rule in RULES):
            raise ValueError(f"`class_rule` must be one of {', '.join(RULES)} or a class index, got {rule!r}")
        if isinstance(rule, int) and rule < 0:
            raise ValueError(f"a fixed `class_rule` is a class index of the prior (0 or more), got {rule}")
        if search_latents < 1:
            raise ValueError(f"`class_search_latents` must be at least 1, got {search_latents}")
        if search_top is not None and search_top < 1:
            raise ValueError(f"`class_search_top` must be at least 1 or null (every class), got {search_top}")
        if chunk < 1:
            raise ValueError(f"the class search's `chunk` must be at least 1, got {chunk}")
        self.rule, self.class_map = rule, None if class_map is None else [int(j) for j in class_map]
        self.search_latents, self.search_top, self.chunk = search_latents, search_top, chunk

    def resolve(self, victim) -> str:
        """The rule that applies to ``victim``: ``victim``, ``search`` or ``fixed``."""
        if isinstance(self.rule, int):
            return "fixed"
        if self.rule == "auto":
            return "victim" if has_tail(victim) else "search"
        return self.rule

    def _uses_prediction(self, victim) -> bool:
        rule = self.resolve(victim)
        return rule == "victim" or (rule == "search" and self.search_top is not None)

    def check(self, victim, c_dim: int) -> None:
        """Refuse settings that cannot work with this victim and a prior of ``c_dim`` classes, naming the fix."""
        if c_dim == 0:
            if self.rule != "auto" or self.class_map is not None or self.search_top is not None:
                raise ValueError(
                    "the prior is unconditional (c_dim = 0), so there is no class to choose; leave `class_rule` at "
                    "'auto' and `class_map`/`class_search_top` unset, or use a class-conditional prior"
                )
            return
        rule = self.resolve(victim)
        if rule == "fixed" and self.rule >= c_dim:
            raise ValueError(f"`class_rule` {self.rule} is not a class of this prior; use 0 .. {c_dim - 1}")
        if not self._uses_prediction(victim):
            if self.class_map is not None:
                raise ValueError(
                    f"`class_map` maps the victim's prediction, which rule {rule!r} does not use; unset it"
                )
            return
        if not has_tail(victim):
            what = "`class_search_top` ranks classes by" if rule == "search" else "the 'victim' rule needs"
            raise ValueError(
                f"{what} the victim's prediction, but this split leaves no tail (a head-only victim); use "
                "`class_rule: search` without `class_search_top`, or a fixed class index"
            )
        n = _num_classes(victim)
        if self.class_map is None:
            if n != c_dim:
                raise ValueError(
                    f"the victim predicts {n} classes but the prior has {c_dim}, so its prediction names no prior "
                    f"class; set `class_map` (victim class -> prior class, {n} entries), or use `class_rule: "
                    "search` or a fixed class index"
                )
        elif len(self.class_map) != n or not all(0 <= j < c_dim for j in self.class_map):
            raise ValueError(
                f"`class_map` must give a prior class in 0 .. {c_dim - 1} for each of the victim's {n} classes, got "
                f"{len(self.class_map)} entries {self.class_map[:10]}"
            )
        if self.search_top is not None and rule == "search" and self.search_top > c_dim:
            raise ValueError(f"`class_search_top` {self.search_top} exceeds the prior's {c_dim} classes")

    def choose(
        self,
        h_star: Tensor,
        index: Tensor,
        *,
        victim,
        prior: ConditionalPrior,
        seed: int,
        score: Callable[[Tensor, Tensor], Tensor],
        truncation: float = 1.0,
    ) -> ClassChoice:
        """The class of each target in a batch: ``h_star`` [N, ...] the observed features, ``index`` [N] the
        targets' indices (the search's seeds), ``score(images, h)`` the attack loss per sample for images as
        ``prior.render`` returns them, ``truncation`` that of the initial latents."""
        c_dim = int(prior.c_dim)
        self.check(victim, c_dim)
        if c_dim == 0:
            raise ValueError("the prior is unconditional (c_dim = 0): there is no class to choose, call it with c=None")
        rule = self.resolve(victim)
        if rule == "fixed":
            classes = torch.full((len(h_star),), self.rule, dtype=torch.long, device=h_star.device)
        elif rule == "victim":
            classes = victim_classes(victim, h_star, self.class_map)
        else:
            candidates = None
            if self.search_top is not None:
                ranked = victim_logits(victim, h_star).argsort(1, descending=True)
                ranked = _to_prior_classes(ranked, self.class_map).tolist()
                candidates = [list(dict.fromkeys(row))[: self.search_top] for row in ranked]
            classes = search_classes(
                prior,
                h_star,
                index,
                seed,
                score,
                candidates=candidates,
                latents_per_class=self.search_latents,
                truncation=truncation,
                chunk=self.chunk,
            )
        return ClassChoice(one_hot(classes, c_dim, h_star.dtype), classes, rule)
