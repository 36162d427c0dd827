"""The recipes' augmentations on whole batches, on the training device (docs/recipes.md).

Every name of ``--augment`` beyond the lecture's crop, flip and affine (cnnlab.data.loader):

* ``trivialaugment``, ``randaugment``, ``autoaugment``, ``jitter``: torchvision ``transforms.v2``
  (TrivialAugmentWide, RandAugment with ``randaugment_ops`` ops at ``randaugment_magnitude``,
  AutoAugment's ImageNet policy, ColorJitter(``jitter``, ``jitter``, ``jitter``)) on the uint8
  batch, as torchvision's reference recipe runs them on uint8 images. On a batch, v2 draws ONE op
  and magnitude (one jitter factor) for all its images; one draw per image would need a Python
  call per image. So the batch is cut into :data:`POLICY_GROUPS` groups of consecutive images and
  each group gets its own draw: a batch of 128 sees 8 different ops, for 8 v2 calls
  (``policy_groups`` says which rows form a group).
* ``erasing``: by hand, because v2.RandomErasing erases one rectangle at one place in every image
  of a call; here each image gets its own rectangle (torchvision's sampling: scale 0.02-0.33 of
  the area, aspect 0.3-3.3, 10 tries, p ``erasing_prob``) in one masked fill over the batch, after
  normalisation, so the erased pixels are the mean colour (value 0, torchvision's default).
* ``mixup``, ``cutmix``: v2.MixUp (``mixup_alpha``) and v2.CutMix (``cutmix_alpha``); with
  both, each batch takes one of them at random (v2.RandomChoice). The targets become (N, K) float
  probabilities (soft targets) and each image is mixed with its neighbour in the batch (v2 pairs
  image i with image i - 1).

The strengths named in double backticks are the fields of :class:`cnnlab.config.AugmentParams`,
the run's ``--mixup-alpha`` ... options; TrainConfig holds their defaults (torchvision's and timm's
recipe values), which a call without ``params`` gets.

Determinism: v2 draws from the global CPU generator. Each group (and the mixing) runs with that
generator forked (:func:`torch.random.fork_rng`, restored afterwards) and seeded from (seed, epoch,
step, group), so the draws depend on where a batch is in the run, not on what ran before: a
resumed run repeats them bit for bit, like the crop and flip (cnnlab.engine.resume). Under DDP the
groups are counted over the global batch (each rank's rows keep the single-process draws); the
mixing pairs images within each rank's batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cnnlab.config import AugmentParams

#: applied to the uint8 batch, in this order, before crop / flip / affine
POLICIES = ("autoaugment", "randaugment", "trivialaugment", "jitter")
#: draws of a policy op per batch (see the module docstring); a batch smaller than this draws one
#: per image
POLICY_GROUPS = 8
_SALT_POLICY, _SALT_MIX = 0x5EED_0001, 0x5EED_0002  # keep these streams apart from the loader's


def mix_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from ``seed`` and ``keys`` (splitmix-style, so (epoch, step) pairs never
    collide); cnnlab.data.loader.seeded_generator seeds its generators with it."""
    mixed = seed
    for k in keys:
        mixed = (mixed * 6364136223846793005 + k + 1442695040888963407) % (2**63)
    return mixed


def _policy(name: str, params: AugmentParams):
    from torchvision.transforms import v2

    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if name == "randaugment":  # magnitude: a bin of torchvision's default 31 (0..30)
        return v2.RandAugment(
            num_ops=params.randaugment_ops, magnitude=params.randaugment_magnitude
        )
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    if name == "jitter":  # saturation leaves 1-channel images as they are (as PIL does)
        j = params.jitter
        return v2.ColorJitter(brightness=j, contrast=j, saturation=j)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")


def policy_groups(
    n: int, shard: tuple[int, int] = (0, 1), groups: int = POLICY_GROUPS
) -> list[tuple[int, torch.Tensor]]:
    """(group number, this rank's row indices in it) for a local batch of ``n`` rows.

    Groups cut the global batch of ``n * world`` images (rank r holds rows r, r + world, ...) into
    ``groups`` runs of consecutive images, so a group's draw is the same whatever the number of
    processes."""
    rank, world = shard
    total = n * world
    if total == 0:
        return []
    k = min(groups, total)
    position = torch.arange(n) * world + rank  # each local row's place in the global batch
    gid = position * k // total
    return [(int(g), (gid == g).nonzero().flatten()) for g in torch.unique(gid)]


def apply_policies(
    x: torch.Tensor,
    names: Sequence[str],
    key: tuple[int, ...],
    shard: tuple[int, int] = (0, 1),
    params: AugmentParams | None = None,
) -> torch.Tensor:
    """The policy ops among ``names`` (in :data:`POLICIES` order) on a uint8 batch (N, C, H, W),
    one draw per group of :func:`policy_groups`; ``key``: (seed, epoch, step); ``params``: the
    strengths (None: TrainConfig's defaults)."""
    from torchvision.transforms import v2

    params = params or AugmentParams.of()
    chosen = [_policy(p, params) for p in POLICIES if p in names]
    if not chosen or x.shape[0] == 0:
        return x
    transform = chosen[0] if len(chosen) == 1 else v2.Compose(chosen)
    out = torch.empty_like(x)
    for g, rows in policy_groups(x.shape[0], shard):
        rows = rows.to(x.device)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mix_seed(*key, _SALT_POLICY, g))
            out[rows] = transform(x.index_select(0, rows))
    return out


def random_erasing(
    x: torch.Tensor,
    g: torch.Generator,
    p: float,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    tries: int = 10,
    shard: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """Per image, with probability ``p``, one rectangle set to 0 (the mean after normalising).

    torchvision's RandomErasing sampling, vectorised: ``tries`` candidate rectangles per image
    (area a fraction ``scale`` of the image's, log-uniform aspect in ``ratio``), the first that fits
    is used and an image with none is left alone. x: (N, C, H, W) float; ``shard`` as for
    cnnlab.data.loader.random_crop (drawn for the global batch, this rank's rows kept)."""
    n, _, h, w = x.shape
    rank, world = shard
    drawn, dev = n * world, x.device

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t[rank::world] if world > 1 else t

    on = rows(torch.rand(drawn, generator=g, device=dev)) < p
    u = rows(torch.rand(drawn, tries, 4, generator=g, device=dev, dtype=torch.float64))
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    lo, hi = torch.log(torch.tensor(ratio, dtype=torch.float64))
    aspect = torch.exp(lo + (hi - lo) * u[..., 1])
    eh = torch.sqrt(area * aspect).round().long()  # N x tries, pixels
    ew = torch.sqrt(area / aspect).round().long()
    fits = (eh < h) & (ew < w)
    first = fits.long().argmax(1, keepdim=True)  # the first try that fits (0 when none does)
    eh, ew = eh.gather(1, first), ew.gather(1, first)  # N x 1
    top = (u[..., 2].gather(1, first) * (h - eh + 1)).floor().long()
    left = (u[..., 3].gather(1, first) * (w - ew + 1)).floor().long()
    on = on & fits.any(1)
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    box = (
        (ys >= top[:, :, None])
        & (ys < (top + eh)[:, :, None])
        & (xs >= left[:, :, None])
        & (xs < (left + ew)[:, :, None])
    )  # N x H x W
    return x.masked_fill((box & on[:, None, None])[:, None], 0.0)


def mix_batch(
    x: torch.Tensor,
    targets: torch.Tensor,
    names: Sequence[str],
    num_classes: int,
    key: tuple[int, ...],
    params: AugmentParams | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp and/or CutMix (v2) of a normalised float batch: (images, (N, K) float32 soft
    targets). ``key``: (seed, epoch, step); one mixing weight per batch, as v2 and timm draw it;
    ``params``: the alphas (None: TrainConfig's defaults)."""
    from torchvision.transforms import v2

    params = params or AugmentParams.of()
    chosen = []
    if "mixup" in names:
        chosen.append(v2.MixUp(alpha=params.mixup_alpha, num_classes=num_classes))
    if "cutmix" in names:
        chosen.append(v2.CutMix(alpha=params.cutmix_alpha, num_classes=num_classes))
    if not chosen:
        return x, targets
    transform = chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(mix_seed(*key, _SALT_MIX))
        mixed, soft = transform(x, targets)
    return mixed, soft.float()
