"""Transfer learning: take what a network learnt on task A and reuse it for task B (lecture,
"Transfer Learning"): frozen layers keep task A's knowledge, modifiable layers are retrained.

    plan = prepare_transfer(model, cfg, class_names=..., in_channels=...)   # what api.train calls

* :mod:`~cnnlab.transfer.source`: load a cnnlab run / checkpoint, ImageNet or a weights file into a
  new model (new classifier, adapted first conv, strict elsewhere) and report every tensor;
* :mod:`~cnnlab.transfer.freeze`: which parameters are frozen (``backbone``, ``stages:N``,
  ``up-to:LAYER``, globs) and frozen BatchNorm kept in eval mode;
* :mod:`~cnnlab.transfer.recipes`: linear probe, fine-tune (head first, then discriminative rates),
  gradual unfreezing;
* :mod:`~cnnlab.transfer.embed`, :mod:`~cnnlab.transfer.lr_find`, :mod:`~cnnlab.transfer.study`:
  penultimate-layer embeddings, the learning-rate range test, the "should I transfer?" study.
"""

from __future__ import annotations

from cnnlab.transfer.embed import embed
from cnnlab.transfer.freeze import (
    FREEZE_FORMS,
    frozen_batchnorms,
    model_groups,
    resolve_freeze,
    train_mode,
)
from cnnlab.transfer.lr_find import lr_find, plot_lr_find
from cnnlab.transfer.recipes import STRATEGIES, StagedUnfreeze, TransferPlan, prepare_transfer
from cnnlab.transfer.source import SourceReport, load_pretrained
from cnnlab.transfer.study import transfer_study, write_class_subset

# The functions above share their modules' names (embed, lr_find): importing them here makes
# `cnnlab.transfer.lr_find` the function; the modules stay reachable as cnnlab.transfer.lr_find.X
# through `from cnnlab.transfer.lr_find import X`.

__all__ = [
    "FREEZE_FORMS",
    "STRATEGIES",
    "SourceReport",
    "StagedUnfreeze",
    "TransferPlan",
    "embed",
    "frozen_batchnorms",
    "load_pretrained",
    "lr_find",
    "model_groups",
    "plot_lr_find",
    "prepare_transfer",
    "resolve_freeze",
    "train_mode",
    "transfer_study",
    "write_class_subset",
]
