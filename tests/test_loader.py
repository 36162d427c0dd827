"""The tensor data path against straightforward per-sample references."""

import torch
import torch.nn.functional as F

from cnnlab.data.loader import TensorLoader, _generator, random_crop, random_flip


def test_random_crop_equals_per_sample_slicing():
    x = torch.randint(0, 255, (6, 3, 10, 12)).float()
    g = _generator(0, 1, 2)
    out = random_crop(x, 3, g)
    g = _generator(0, 1, 2)  # the same draws, replayed for the reference
    dy = torch.randint(0, 7, (6,), generator=g)  # the same draw order: dy then dx, one per image
    dx = torch.randint(0, 7, (6,), generator=g)
    padded = F.pad(x, (3, 3, 3, 3))
    for i in range(6):
        ref = padded[i, :, dy[i] : dy[i] + 10, dx[i] : dx[i] + 12]
        assert torch.equal(out[i], ref)


def test_random_flip_flips_exactly_the_drawn_half():
    x = torch.arange(4 * 1 * 2 * 3).float().view(4, 1, 2, 3)
    out = random_flip(x, _generator(5))
    flip = torch.rand(4, generator=_generator(5)) < 0.5
    for i in range(4):
        assert torch.equal(out[i], x[i].flip(-1) if flip[i] else x[i])


def _loader(**kw):
    images = torch.randint(0, 255, (50, 1, 8, 8), dtype=torch.uint8)
    targets = torch.arange(50) % 3
    return TensorLoader(
        images, targets, torch.tensor([0.5]), torch.tensor([0.25]), batch_size=8, **kw
    )


def test_epoch_covers_every_sample_once_and_is_seeded():
    ld = _loader(shuffle=True, seed=3)
    idx = torch.cat([b[2] for b in ld.batches(0)])
    assert sorted(idx.tolist()) == list(range(50))
    again = torch.cat([b[2] for b in ld.batches(0)])
    assert torch.equal(idx, again)
    other = torch.cat([b[2] for b in ld.batches(1)])
    assert not torch.equal(idx, other)


def test_resume_mid_epoch_gives_the_same_batches():
    ld = _loader(shuffle=True, seed=1, augment=("crop", "flip", "affine"))
    full = list(ld.batches(2))
    tail = list(ld.batches(2, start=3))
    assert len(tail) == len(full) - 3
    for a, b in zip(full[3:], tail, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_normalisation_matches_formula():
    ld = _loader()
    x, y, idx = next(ld.batches(0))
    ref = (ld.images[idx].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, ref)


def test_shards_are_disjoint_and_cover_the_data():
    a = _loader(shuffle=True, seed=0, shard=(0, 2))
    b = _loader(shuffle=True, seed=0, shard=(1, 2))
    ia = torch.cat([t[2] for t in a.batches(4)])
    ib = torch.cat([t[2] for t in b.batches(4)])
    assert set(ia.tolist()).isdisjoint(ib.tolist())
    assert sorted(ia.tolist() + ib.tolist()) == list(range(50))
