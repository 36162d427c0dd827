"""Recipes: which groups train in which epoch, and at what learning rate.

With groups ``g_0 .. g_{K-1}`` (stem and stages, input side first) and the head ``g_K``:

=================  ==============================================================================
``full``           everything trains from epoch 0 at the base rate (minus ``freeze``)
``linear-probe``   only the head trains; the backbone is a fixed feature extractor
``fine-tune``      the head alone for ``head_epochs`` epochs, then everything, with discriminative
                   rates: ``lr(g_i) = lr * lr_mult ** (K - i)`` (each earlier group gets ``lr_mult``
                   times the next one's rate; the head the full rate) -- fastai's ``fine_tune``
``gradual``        the head in epoch 0, then one more group from the top each epoch
                   (``g_{K-1}`` from epoch 1, ``g_{K-2}`` from epoch 2, ...), same rates as
                   fine-tune (ULMFiT's gradual unfreezing)
=================  ==============================================================================

``freeze`` (see :mod:`cnnlab.transfer.freeze`) is applied on top of every recipe: those parameters
never train. Staged unfreezing is a :class:`~cnnlab.engine.trainer.Callback` (``on_epoch_start``)
that flips ``requires_grad`` and re-applies the BatchNorm eval policy; the optimizer holds every
parameter that will ever train from the start (``plan.include_frozen``), and keeps state only once
a parameter has a gradient.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cnnlab.engine.trainer import Callback, Trainer
from cnnlab.errors import ConfigError
from cnnlab.transfer.freeze import (
    Group,
    frozen_batchnorms,
    model_groups,
    resolve_freeze,
    train_mode,
)
from cnnlab.transfer.source import SourceReport, load_pretrained

log = logging.getLogger(__name__)

NEVER = math.inf  # unfreeze epoch of groups a recipe never trains
STRATEGIES = ("full", "linear-probe", "fine-tune", "gradual")


def unfreeze_epochs(strategy: str, groups: list[Group], *, head_epochs: int = 1) -> list[float]:
    """0-based epoch from which each group trains (``NEVER`` = not in this recipe); head last.

    >>> g = [Group(n, (), ()) for n in ("stem", "layer1", "layer2", "head")]
    >>> unfreeze_epochs("gradual", g)
    [3, 2, 1, 0]
    """
    k = len(groups) - 1  # index of the head
    if strategy == "full":
        return [0] * len(groups)
    if strategy == "linear-probe":
        return [NEVER] * k + [0]
    if strategy == "fine-tune":
        return [max(0, int(head_epochs))] * k + [0]
    if strategy == "gradual":
        return [k - i for i in range(k)] + [0]
    raise ConfigError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def discriminative_scales(strategy: str, groups: list[Group], lr_mult: float) -> list[float]:
    """Learning-rate multiplier per group: ``lr_mult ** (K - i)`` for fine-tune/gradual, else 1."""
    k = len(groups) - 1
    if strategy in ("fine-tune", "gradual"):
        return [lr_mult ** (k - i) for i in range(len(groups))]
    return [1.0] * len(groups)


@dataclass
class TransferPlan:
    """Everything ``api.train`` needs to run a transfer recipe (see :func:`prepare_transfer`)."""

    model: nn.Module
    groups: list[Group]
    unfreeze_epoch: list[float]  # per group
    scales: list[float]  # per group
    static_frozen: set[str]  # parameter names `freeze` keeps frozen in every epoch
    strategy: str
    freeze: str
    lr: float
    source: SourceReport | None = None
    callbacks: list[Callback] = field(default_factory=list)

    # -- what api.train reads -------------------------------------------------------------------
    @property
    def source_preprocess(self) -> dict[str, Any] | None:
        return self.source.preprocess if self.source else None

    @property
    def lr_scale(self) -> dict[str, float]:
        """Parameter-name prefix (``"layer1."``) -> lr multiplier (for ``optim.param_groups``)."""
        out: dict[str, float] = {}
        for g, s in zip(self.groups, self.scales, strict=True):
            if s != 1.0:
                out.update({path + ".": s for path in g.modules})
        return out

    @property
    def include_frozen(self) -> bool:
        """True when a frozen parameter trains later: it must already sit in an optimizer group."""
        return any(0 < e < NEVER for e in self.unfreeze_epoch)

    def train_mode(self, model: nn.Module) -> None:
        train_mode(model)

    # -- the schedule ---------------------------------------------------------------------------
    def trainable_at(self, epoch: int) -> set[str]:
        """Parameter names that train in 0-based ``epoch``."""
        return {
            name
            for g, e in zip(self.groups, self.unfreeze_epoch, strict=True)
            if e <= epoch
            for name in g.params
            if name not in self.static_frozen
        }

    def ever_trainable(self) -> set[str]:
        return self.trainable_at(2**31)

    def apply(self, model: nn.Module, epoch: int) -> bool:
        """Set requires_grad for ``epoch``; True when anything changed."""
        want = self.trainable_at(epoch)
        params = dict(model.named_parameters())
        if not set(params) >= want:  # a torch.compile wrapper: names carry a prefix
            params = {k.removeprefix("_orig_mod."): p for k, p in params.items()}
        changed = any(p.requires_grad != (n in want) for n, p in params.items())
        for name, p in params.items():
            p.requires_grad_(name in want)
        return changed

    # -- reporting ------------------------------------------------------------------------------
    def group_rows(self) -> list[dict[str, Any]]:
        params = dict(self.model.named_parameters())
        rows = []
        for g, e, s in zip(self.groups, self.unfreeze_epoch, self.scales, strict=True):
            trainable = [n for n in g.params if n not in self.static_frozen]
            rows.append(
                {
                    "group": g.label,
                    "modules": list(g.modules),
                    "parameters": sum(params[n].numel() for n in g.params),
                    "trainable_now": sum(
                        params[n].numel() for n in g.params if params[n].requires_grad
                    ),
                    "unfreeze_epoch": None if e == NEVER or not trainable else int(e),
                    "lr_scale": s,
                    "lr": self.lr * s,
                }
            )
        return rows

    def layer_rows(self) -> list[dict[str, Any]]:
        """One row per layer with parameters: frozen or modifiable now, size, learning rate."""
        group_of = {n: i for i, g in enumerate(self.groups) for n in g.params}
        eval_bn = set(frozen_batchnorms(self.model))
        rows = []
        for name, module in self.model.named_modules():
            own = list(module.named_parameters(recurse=False))
            if not own:
                continue
            full = [f"{name}.{n}" if name else n for n, _ in own]
            grads = [p.requires_grad for _, p in own]
            i = group_of[full[0]]
            e = self.unfreeze_epoch[i]
            static = all(n in self.static_frozen for n in full)
            status = "modifiable" if all(grads) else "frozen" if not any(grads) else "partly frozen"
            rows.append(
                {
                    "layer": name,
                    "type": type(module).__name__,
                    "group": self.groups[i].label,
                    "parameters": sum(p.numel() for _, p in own),
                    "status": status,
                    "requires_grad": all(grads),
                    "unfreeze_epoch": None if static or e == NEVER else int(e),
                    "lr": self.lr * self.scales[i] if not static and e != NEVER else None,
                    "batchnorm_eval": name in eval_bn if "Norm" in type(module).__name__ else None,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the load report (loaded / reinitialised / adapted), groups and layers."""
        frozen_now = [n for n, p in self.model.named_parameters() if not p.requires_grad]
        return {
            "strategy": self.strategy,
            "freeze": self.freeze,
            "lr": self.lr,
            "lr_scale": self.lr_scale,
            "include_frozen": self.include_frozen,
            "source": self.source.to_dict() if self.source else None,
            "groups": self.group_rows(),
            "frozen_parameters": frozen_now,
            "batchnorm_eval": frozen_batchnorms(self.model),
            "layers": self.layer_rows(),
        }

    def layer_table(self) -> Any:
        """A ``rich.table.Table``: every layer with parameters, frozen or modifiable, its lr."""
        from rich.table import Table

        title = f"transfer: {self.strategy}" + (
            f", freeze={self.freeze}" if self.freeze != "none" else ""
        )
        table = Table(title=title)
        for col in ("layer", "type", "group", "parameters", "status", "from epoch", "lr"):
            table.add_column(col, justify="right" if col in ("parameters", "lr") else "left")
        for r in self.layer_rows():
            status = r["status"] + (" (BN eval)" if r["batchnorm_eval"] else "")
            style = "dim" if r["status"] == "frozen" else None
            table.add_row(
                r["layer"],
                r["type"],
                r["group"],
                f"{r['parameters']:,}",
                status,
                "-" if r["unfreeze_epoch"] is None else str(r["unfreeze_epoch"] + 1),
                "-" if r["lr"] is None else f"{r['lr']:.3g}",
                style=style,
            )
        return table


class StagedUnfreeze(Callback):
    """At each epoch start: requires_grad for this epoch, then frozen BatchNorm layers to eval.

    ``Trainer.fit`` calls ``train_mode`` and then ``on_epoch_start``; re-applying the BN policy
    here keeps it right even after this callback unfroze a group (and even if the trainer only
    called ``.train()``). The schedule is a function of the epoch, so a resumed run lands in the
    same state (no saved state).
    """

    def __init__(self, plan: TransferPlan):
        self.plan = plan

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.plan.include_frozen and trainer.optimizer is not None:
            held = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
            params = dict(self.plan.model.named_parameters())
            absent = [n for n in sorted(self.plan.ever_trainable()) if id(params[n]) not in held]
            if absent:
                raise RuntimeError(
                    f"strategy {self.plan.strategy!r} unfreezes parameters the optimizer does "
                    f"not hold ({absent[:5]}...); build the groups with "
                    "engine.optim.param_groups(model, wd, lr, plan.lr_scale, "
                    "include_frozen=plan.include_frozen)"
                )

    def on_epoch_start(self, trainer: Trainer) -> None:
        epoch = trainer.state.epoch
        if self.plan.apply(self.plan.model, epoch):
            trainable = [
                g.label
                for g, e in zip(self.plan.groups, self.plan.unfreeze_epoch, strict=True)
                if e <= epoch
            ]
            log.info("epoch %d: training %s", epoch + 1, ", ".join(trainable))
        self.plan.train_mode(trainer.model)


def prepare_transfer(
    model: nn.Module,
    cfg: Any,
    *,
    class_names: list[str],
    in_channels: int,
) -> TransferPlan:
    """Load ``cfg.init_from`` into ``model``, freeze per ``cfg.freeze`` and set up ``cfg.strategy``.

    ``cfg`` is a :class:`cnnlab.config.TrainConfig` (fields init_from, freeze, strategy, lr_mult,
    head_epochs, lr, epochs, weights, model). On return the model's ``requires_grad`` flags are
    those of epoch 0; the plan's callbacks move them on later epochs.
    """
    if cfg.init_from and cfg.weights:
        raise ConfigError(
            f"weights={cfg.weights!r} and init_from={cfg.init_from!r} both give starting weights; "
            "use init_from alone (it takes 'imagenet', weights files and cnnlab runs)"
        )
    source = None
    if cfg.init_from:
        source = load_pretrained(
            model,
            cfg.init_from,
            model_name=cfg.model,
            class_names=class_names,
            in_channels=in_channels,
        )
    elif cfg.strategy != "full" and not cfg.weights:
        log.warning(
            "strategy=%s without init_from or weights: the backbone is random, so this is a "
            "random-features baseline",
            cfg.strategy,
        )
    groups = model_groups(model)
    static = resolve_freeze(model, cfg.freeze, groups)
    plan = TransferPlan(
        model=model,
        groups=groups,
        unfreeze_epoch=unfreeze_epochs(cfg.strategy, groups, head_epochs=cfg.head_epochs),
        scales=discriminative_scales(cfg.strategy, groups, cfg.lr_mult),
        static_frozen=static,
        strategy=cfg.strategy,
        freeze=cfg.freeze,
        lr=cfg.lr,
        source=source,
    )
    if not plan.trainable_at(0):
        raise ConfigError(
            f"freeze={cfg.freeze!r} with strategy={cfg.strategy!r} leaves nothing to train in "
            "the first epoch (the head is frozen too); freeze less, e.g. freeze=backbone"
        )
    late = [e for e in plan.unfreeze_epoch if 0 < e < NEVER]
    if late and min(late) >= cfg.epochs:
        log.warning(
            "strategy=%s unfreezes the backbone at epoch %d but the run has %d epochs: only the "
            "head will train (raise epochs or lower head_epochs)",
            cfg.strategy,
            int(min(late)) + 1,
            cfg.epochs,
        )
    plan.apply(model, 0)
    plan.callbacks = [StagedUnfreeze(plan)]
    log.info(
        "transfer: strategy=%s, freeze=%s: %d of %d parameter tensors train in epoch 1",
        cfg.strategy,
        cfg.freeze,
        len(plan.trainable_at(0)),
        sum(1 for _ in model.parameters()),
    )
    return plan


__all__ = [
    "NEVER",
    "STRATEGIES",
    "StagedUnfreeze",
    "TransferPlan",
    "discriminative_scales",
    "prepare_transfer",
    "unfreeze_epochs",
]
