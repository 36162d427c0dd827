"""The tensor data path against straightforward per-sample references."""

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data.loader import TensorLoader, random_crop, random_flip, seeded_generator


def test_random_crop_equals_per_sample_slicing():
    x = torch.randint(0, 255, (6, 3, 10, 12)).float()
    g = seeded_generator(0, 1, 2)
    out = random_crop(x, 3, g)
    g = seeded_generator(0, 1, 2)  # the same draws, replayed for the reference
    dy = torch.randint(0, 7, (6,), generator=g)  # the same draw order: dy then dx, one per image
    dx = torch.randint(0, 7, (6,), generator=g)
    padded = F.pad(x, (3, 3, 3, 3))
    for i in range(6):
        ref = padded[i, :, dy[i] : dy[i] + 10, dx[i] : dx[i] + 12]
        assert torch.equal(out[i], ref)


def test_random_flip_flips_exactly_the_drawn_half():
    x = torch.arange(4 * 1 * 2 * 3).float().view(4, 1, 2, 3)
    out = random_flip(x, seeded_generator(5))
    flip = torch.rand(4, generator=seeded_generator(5)) < 0.5
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


# -- the memory-mapped decode cache and splits that do not fit ------------------------------------------------
def _png_folder(tmp_path, n=11):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (9 + i, 13, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_decode_cache_is_memory_mapped_equal_to_per_file_decoding_and_left_whole(tmp_path):
    import numpy as np

    from cnnlab.data.tensors import PreprocessSpec, decode_files, load_file

    paths = _png_folder(tmp_path)
    spec = PreprocessSpec(12, 3, (0.5,) * 3, (0.25,) * 3)
    want = np.stack([load_file(p, spec) for p in paths])  # the per-file reference
    first = decode_files(paths, spec, cache_dir=tmp_path / "cache", workers=2)
    again = decode_files(paths, spec, cache_dir=tmp_path / "cache")
    for got in (first, again):
        assert isinstance(got, np.memmap) and got.shape == (11, 3, 12, 12)
        np.testing.assert_array_equal(got, want)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].endswith(".npy")  # no temporary file left behind
    tensor = torch.from_numpy(
        again
    )  # copy-on-write: writable for torch, and writes never reach the file
    tensor[0].zero_()
    np.testing.assert_array_equal(np.load(tmp_path / "cache" / files[0]), want)


def test_decode_without_a_writable_cache_decodes_into_memory(tmp_path, caplog):
    import numpy as np

    from cnnlab.data.tensors import PreprocessSpec, decode_files, load_file

    paths = _png_folder(tmp_path, 3)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    spec = PreprocessSpec(8, 1, (0.5,), (0.25,))
    got = decode_files(paths, spec, cache_dir=blocker / "cache")
    assert (
        not isinstance(got, np.memmap) and "could not write the decoded-image cache" in caplog.text
    )
    np.testing.assert_array_equal(got, np.stack([load_file(p, spec) for p in paths]))
    assert decode_files([], spec, cache_dir=tmp_path / "c2").shape == (0, 1, 8, 8)


def test_a_split_larger_than_half_the_memory_says_it_pages_from_the_cache(
    tmp_path, monkeypatch, caplog
):
    from cnnlab.data import tensors

    paths = _png_folder(tmp_path, 4)
    monkeypatch.setattr(
        tensors, "available_memory", lambda: 100
    )  # bytes: far less than 4 x 3 x 8 x 8 x 2
    tensors.decode_files(
        paths, tensors.PreprocessSpec(8, 3, (0.5,) * 3, (0.25,) * 3), cache_dir=tmp_path / "c"
    )
    assert "stay in the memory-mapped cache" in caplog.text and str(tmp_path / "c") in caplog.text


def test_channel_stats_in_chunks_match_numpy():
    import numpy as np

    from cnnlab.data.tensors import channel_stats

    images = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8)
    ref = images.numpy().astype(np.float64) / 255
    for chunk in (1, 8, 4096):
        mean, std = channel_stats(images, chunk=chunk)
        np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), atol=1e-6)
        np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3), ddof=1), atol=1e-6)


def test_host_resident_images_give_the_same_batches_as_device_resident(monkeypatch):
    """A split too big for the GPU stays in host memory and each batch is copied over: the batches are the
    ones a resident split gives (checked on the CPU, where both homes are the host)."""
    import numpy as np

    from cnnlab import api
    from cnnlab.data.tensors import PreprocessSpec
    from cnnlab.engine import loaders

    images = torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8)
    targets = np.arange(40) % 4
    spec = PreprocessSpec(8, 3, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    kw = {"shuffle": True, "seed": 2, "augment": ("crop", "flip")}
    resident = api.make_loader(images, targets, spec, torch.device("cpu"), 16, **kw)
    monkeypatch.setattr(loaders, "fits_on_device", lambda images, device: False)
    hosted = api.make_loader(images, targets, spec, torch.device("cpu"), 16, **kw)
    for a, b in zip(resident.batches(1), hosted.batches(1), strict=True):
        for u, v in zip(a, b, strict=True):
            assert torch.equal(u, v)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_host_resident_images_copied_per_batch_equal_gpu_resident(monkeypatch):
    import numpy as np

    from cnnlab import api
    from cnnlab.data.tensors import PreprocessSpec
    from cnnlab.engine import loaders

    images = torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8)
    spec, cuda = PreprocessSpec(8, 3, (0.5,) * 3, (0.25,) * 3), torch.device("cuda")
    kw = {"shuffle": True, "seed": 2, "augment": ("crop", "flip")}
    resident = api.make_loader(images, np.arange(40) % 4, spec, cuda, 16, **kw)
    monkeypatch.setattr(loaders, "fits_on_device", lambda images, device: False)
    hosted = api.make_loader(images, np.arange(40) % 4, spec, cuda, 16, **kw)
    assert hosted.images.device.type == "cpu" and resident.images.device.type == "cuda"
    for a, b in zip(resident.batches(1), hosted.batches(1), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].device.type == "cuda"


def test_streamed_files_give_the_batches_of_the_cache(tmp_path):
    """StreamLoader (files decoded per batch in 2 worker processes) yields exactly the TensorLoader's batches
    over the decoded cache: same order, augmentation, normalisation, and resumption mid-epoch."""
    import numpy as np

    from cnnlab import api
    from cnnlab.data.loader import FileImages, StreamLoader
    from cnnlab.data.tensors import PreprocessSpec, decode_files

    paths = _png_folder(tmp_path, 21)
    spec = PreprocessSpec(12, 3, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    targets = np.arange(21) % 3
    cached = torch.from_numpy(decode_files(paths, spec, cache_dir=tmp_path / "cache"))
    streamed = FileImages([str(p) for p in paths], spec)
    kw = {"shuffle": True, "seed": 4, "augment": ("crop", "flip"), "drop_last": True}
    memory = api.make_loader(cached, targets, spec, torch.device("cpu"), 5, **kw)
    stream = api.make_loader(streamed, targets, spec, torch.device("cpu"), 5, **kw)
    assert isinstance(stream, StreamLoader) and len(stream) == len(memory) == 4
    for start in (0, 2):
        got, want = list(stream.batches(3, start=start)), list(memory.batches(3, start=start))
        assert len(got) == len(want) == 4 - start
        for a, b in zip(want, got, strict=True):
            for u, v in zip(a, b, strict=True):
                assert torch.equal(u, v)
    assert api.split_channel_stats(streamed) == api.split_channel_stats(cached)


def test_train_streams_when_the_cache_would_not_fit_on_disk(tmp_path, monkeypatch, caplog):
    """--loader auto picks streaming, with a message, when the decoded splits exceed the cache disk's free
    space; the run then trains to the same history as --loader memory (same batches, same statistics)."""
    import shutil
    from collections import namedtuple

    import numpy as np
    from PIL import Image

    from cnnlab import api

    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(24):
            pixels = rng.integers(0, 120, (10, 10), dtype=np.uint8) + (100 if c == "b" else 0)
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    kw = {"data": str(tmp_path / "data"), "epochs": 2, "batch_size": 8, "out": str(tmp_path / "runs"),
          "report": False, "augment": ("crop",)}  # fmt: skip
    memory = api.train(loader="memory", **kw)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    streamed = api.train(**kw)  # auto
    assert "decoding the files every epoch" in caplog.text
    for a, b in zip(memory.history, streamed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_accuracy"] == b["val_accuracy"]
    assert memory.test_metrics["accuracy"] == streamed.test_metrics["accuracy"]
