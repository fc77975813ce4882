"""Method registry and the one entry point the pipeline calls: :func:`score_groups`.

Every module of this package that defines ``READS`` and ``score`` is a method, named by its
module (adding a method is one file, plus its test). The contract:

- ``READS``: what the method reads. ``"act"`` / ``"conv"``: that tap's feature maps;
  ``"act_grad"``: per image and channel, the mean over positions of act · ∂L/∂act (extraction
  stores it, with one extra backward pass, only when such a method is configured); ``"weights"``:
  the model alone.
- ``PARAMS``: the keywords of ``method_params.<method>``, each with its check (:mod:`.params`);
  their defaults are those of ``score``'s keyword arguments (:func:`resolved_params`).
- ``score(group: GroupInputs, **params) -> [C]``: one prunable group's channel scores, higher =
  kept. A scorer may put arrays its native plan form needs into ``group.extra``; they are saved
  beside the scores.
- Optional, for a method reading ``act`` or ``conv``: ``statistics(x, **params) -> [B, C, ...]``,
  the per-image reduction its scores combine: one batch of a tap's maps x [B, C, H, W] (one
  group's channels, on the tap's device, in the tap's dtype) to per-image, per-channel
  statistics; its keywords are a subset of ``PARAMS``, with the same defaults. ``score`` then
  reads ``group.statistics(tap)``, which is that reduction of the stored maps, or, when the
  extraction ran with ``features.store: statistics``, what the extraction computed with it on the
  fly; so scores are the same in both modes, and extraction needs no per-method code. A method
  without it (FP-FMC) reads maps, which a statistics-mode extraction stores for it alone.
- A method with an ``images`` parameter reads only the sample's first ``images`` images
  (:func:`images_read`); a statistics-mode extraction stores no more of them for it.
- Optional: ``NATIVE_FORM`` (a :class:`NativeForm`) with ``native_kept(scores, extra, value,
  min_channels)``, the method's own plan knob; ``check_setting(setting)``, refusals that depend on
  the config alone, raised as :class:`ParamError` at config validation, before any extraction;
  ``RULE_LOGS``, when the pipeline scores the method by rules of its own (FP-FMC), their logs;
  ``PAPER_MACS``, the cost count its paper's figures match (default the seeds' thop count).

A group written by several convs has one tap per writer (METHODS.md's coupled-group rule):
score-based methods divide each tap's scores by their mean absolute value over channels and
average them (:func:`combine`); RGD averages the taps' similarity matrices and sums the writers'
filter L1 norms; FP-FMC sums the taps' redundancy indices; weight-only methods combine their
writers as their modules say.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .. import FmpruneError
from ..models import ArchSpec
from .params import ParamError
from .streaming import checked_maps

WEIGHTS = "weights"
GRAD = "_grad"  # READS suffix: the per-image, per-channel mean of tap · ∂L/∂tap
# Modules of this package that are helpers, not methods.
_HELPERS = {"params", "streaming"}


def _discover() -> dict[str, object]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _HELPERS:
            continue
        module = importlib.import_module(f".{info.name}", __name__)
        if hasattr(module, "READS") and hasattr(module, "score"):
            found[info.name] = module
    return found


def _order() -> tuple[str, ...]:
    """Tables and legends list the config schema's default methods in its order, then the others
    by name; every default must be a registered method."""
    from ..config import schema

    defaults = schema()["properties"]["methods"]["default"]
    unknown = [m for m in defaults if m not in METHODS]
    if unknown:
        raise FmpruneError(f"the config schema's default methods name {unknown[0]!r}, which is no method module")
    return (*defaults, *sorted(set(METHODS) - set(defaults)))


@dataclass(frozen=True)
class NativeForm:
    """A method's own plan knob: the plan key that sets it, the range a MAC-target bisection
    searches, and which way prunes more."""

    key: str
    low: float
    high: float
    higher_prunes_more: bool


@dataclass
class Scored:
    """Per-group channel scores, plus what a method's native plan form needs (RGD's graph)."""

    scores: dict[str, np.ndarray]
    extra: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def get(method: str):
    if method not in METHODS:
        raise FmpruneError(f"unknown method {method!r}; known: {', '.join(ORDER)}")
    return METHODS[method]


def reads(method: str) -> str | None:
    """What ``method`` reads from the feature file ("act", "conv", "act_grad"), None for weights only."""
    what = get(method).READS
    return None if what == WEIGHTS else what


def tap_kind(method: str) -> str | None:
    """The kind of tap modules a method reads ("act" or "conv"), None when it reads weights only."""
    what = reads(method)
    return what.removesuffix(GRAD) if what else None


def native_form(method: str) -> NativeForm | None:
    return getattr(get(method), "NATIVE_FORM", None)


def rule_logs(method: str) -> tuple[str, ...]:
    """Log templates of the rules that score ``method`` in the pipeline, when it has its own
    (FP-FMC); empty when the generic ``score`` rule does."""
    return getattr(get(method), "RULE_LOGS", ())


def has_statistics(method: str) -> bool:
    """Whether ``method`` declares its per-image reduction (``statistics``), so that a
    statistics-mode extraction can store its statistics instead of maps."""
    return reads(method) is not None and hasattr(get(method), "statistics")


def statistics_params(method: str, params: dict | None = None) -> dict:
    """The resolved parameters ``method``'s per-image reduction takes (a subset of its ``PARAMS``)."""
    signature = inspect.signature(get(method).statistics)
    taken = {name for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}
    return {k: v for k, v in resolved_params(method, params).items() if k in taken}


def images_read(method: str, params: dict | None = None) -> int | None:
    """How many of the sample's first images ``method`` reads: its ``images`` parameter when it has
    one (RGD, FP-FMC), else None (all)."""
    return resolved_params(method, params)["images"] if "images" in get(method).PARAMS else None


def paper_macs(method: str) -> str:
    """The cost count a method's published figures match: ``macs`` (conv + linear) or the seeds'
    ``macs_seeds`` (METHODS.md, "Counting cost")."""
    return getattr(get(method), "PAPER_MACS", "macs_seeds")


def check_params(method: str, params: dict) -> None:
    """Refuse unknown keywords and values a method's scorer would reject (its module's ``PARAMS``)."""
    accepted = get(method).PARAMS
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        allowed = ", ".join(sorted(accepted)) or "none"
        raise ParamError(f"method_params.{method}", f"unknown parameter {unknown[0]!r} (accepted: {allowed})")
    for key, value in params.items():
        try:
            accepted[key](value)
        except (ValueError, TypeError) as exc:
            raise ParamError(f"method_params.{method}.{key}", str(exc)) from None


def defaults(method: str) -> dict:
    """Default of every parameter: the keyword defaults of the module's ``score``."""
    signature = inspect.signature(get(method).score)
    return {name: p.default for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}


def resolved_params(method: str, params: dict | None = None) -> dict:
    """``params`` checked, with every parameter left out at its default."""
    params = dict(params or {})
    check_params(method, params)
    return {**defaults(method), **params}


@dataclass
class Setting:
    """What a config-only refusal (a module's ``check_setting``) may look at: one model of the
    config (built from ``arch`` only when a refusal asks, unless ``given``), the config key that
    lists its methods, and the feature dtype."""

    arch: str
    methods_key: str
    dtype: str
    given: nn.Module | None = None

    @cached_property
    def model(self) -> nn.Module:
        from ..models import build

        return self.given if self.given is not None else build(self.arch)

    @cached_property
    def spec(self) -> ArchSpec:
        from ..models import spec_of

        return self.given.channel_spec() if self.given is not None else spec_of(self.arch)


def check_setting(method: str, setting: Setting) -> None:
    """Run ``method``'s config-only refusals (ParamError naming the config key)."""
    check = getattr(get(method), "check_setting", None)
    if check is not None:
        check(setting)


def combine(per_tap: list[np.ndarray]) -> np.ndarray:
    """Mean of the taps' scores after dividing each by its mean absolute value over channels.

    The result is multiplied back by the taps' mean scale: a positive constant, so the ranking
    inside the group is exactly METHODS.md's, while the group stays on the same scale as
    single-tap groups (CDP's global selection compares scores across groups).
    """
    if len(per_tap) == 1:
        return per_tap[0]
    scales = [float(np.mean(np.abs(s))) for s in per_tap]
    normalised = [s / scale if scale > 0 else s for s, scale in zip(per_tap, scales)]
    return np.mean(normalised, axis=0) * (np.mean(scales) if max(scales) > 0 else 1.0)


WEIGHTED_WRITERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def output_filters(layer: nn.Module) -> torch.Tensor:
    """The weights of each output channel of a conv, transposed conv or linear layer, one
    flattened row per channel: [C_out, D]. (A transposed conv stores [C_in, C_out/groups, …]:
    channel j of group k reads the group's C_in/groups inputs.)"""
    w = layer.weight.detach()
    if isinstance(layer, nn.ConvTranspose2d):
        g = layer.groups
        w = w.unflatten(0, (g, w.shape[0] // g)).transpose(1, 2).flatten(0, 1)
    return w.flatten(1)


@dataclass
class GroupInputs:
    """What a method's ``score`` may read of one prunable channel group."""

    name: str
    spec: ArchSpec
    model: nn.Module
    tap_kind: str | None  # "act" / "conv" (the method's), None for weight-only methods
    features: object = None  # a FeatureFile, when the method reads one
    batch_size: int = 64
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # arrays saved beside the scores
    method: str | None = None  # whose per-image reduction ``statistics`` applies
    params: dict = field(default_factory=dict)  # the method's resolved parameters

    @property
    def channels(self) -> int:
        return self.spec.groups[self.name].channels

    @property
    def taps(self) -> tuple[str, ...]:
        """The group's tap modules of the method's kind (one per writer of a coupled group)."""
        return self.spec.groups[self.name].taps[self.tap_kind] if self.tap_kind else ()

    def _channels(self, tap: str) -> tuple[int, int] | None:
        return self.spec.groups[self.name].tap_slices.get(tap)

    def maps(self, tap: str, images: int | None = None) -> Iterator[torch.Tensor]:
        """float32 batches [B, C, H, W] of ``tap``'s maps of this group's channels."""
        return self.features.batches(tap, self.batch_size, images=images, channels=self._channels(tap))

    def statistics(self, tap: str, images: int | None = None) -> Iterator[torch.Tensor]:
        """Batches [B, C, ...] of the method's per-image statistics of ``tap`` (this group's
        channels) over the first ``images`` images: those the extraction stored when it ran in
        statistics mode, else the method's ``statistics`` of the stored maps, batch by batch."""
        params = statistics_params(self.method, self.params)
        if self.features.statistics_params(self.method) is not None:
            return self.features.statistics(self.method, params, self.name, tap, self.batch_size, images)
        reduce = get(self.method).statistics
        return (reduce(x, **params) for x in checked_maps(self.maps(tap, images), dtype=None))

    def tap_dtype(self, tap: str) -> np.dtype:
        """The dtype of the maps the method's scores come from: as stored, or, for statistics
        computed during extraction, as the forward pass produced them."""
        if self.method is not None and self.features.statistics_params(self.method) is not None:
            return self.features.statistics_source_dtype(self.method, self.name, tap)
        return self.features.dtype(tap)

    def taylor_terms(self, tap: str) -> np.ndarray:
        """float64 [N, C]: per image, the mean over positions of tap · ∂L/∂tap, this group's channels."""
        return self.features.taylor_terms(tap, channels=self._channels(tap))

    @property
    def labels(self) -> np.ndarray:
        return self.features.labels

    def _modules_of(self, kind) -> list[tuple[nn.Module, slice]]:
        """Modules of type ``kind`` whose output axis carries the group, with its channel slice
        (one entry per place, when the axis holds the group twice: halves coupled by a product)."""
        modules = dict(self.model.named_modules())
        found = []
        for name in self.spec.producers(self.name):
            if isinstance(modules.get(name), kind):
                out = self.spec.modules[name].out
                found += [(modules[name], slice(start, start + self.channels))
                          for g, start in zip(out, self.spec.offsets(out)) if g == self.name]
        return found

    def filters(self) -> list[torch.Tensor]:
        """Per layer writing the group (several for a residual stream): its output filters of the
        group's channels, one flattened row each (:func:`output_filters`)."""
        return [output_filters(m)[sl] for m, sl in self._modules_of(WEIGHTED_WRITERS)]

    def batch_norms(self) -> list[tuple[nn.Module, slice]]:
        """BatchNorm layers whose output carries the group, with the group's slice of their channels
        (a dense layer's channels are normalised by each consumer's BN of the concatenation)."""
        return self._modules_of((nn.BatchNorm1d, nn.BatchNorm2d))


def score_groups(method: str, spec: ArchSpec, model: nn.Module, features=None,
                 params: dict | None = None, batch_size: int = 64) -> Scored:
    """Scores of every prunable group for ``method`` (higher = more important), in process.

    The pipeline scores FP-FMC by its own cached rules (kselect → cluster → sort); this runs the
    same steps in memory, for tests and benchmarks.
    """
    module, params = get(method), resolved_params(method, params)
    if reads(method) is not None and features is None:
        raise FmpruneError(f"method {method} needs a feature file")
    scored = Scored({}, {})
    for group in spec.prunable_groups():
        inputs = GroupInputs(group, spec, model, tap_kind(method), features, batch_size, method=method, params=params)
        scored.scores[group] = np.asarray(module.score(inputs, **params), dtype=np.float64)
        for key, value in inputs.extra.items():
            scored.extra.setdefault(key, {})[group] = value
    return scored


# Last: the method modules import the helpers above from this package.
METHODS: dict[str, object] = _discover()
ORDER = _order()
