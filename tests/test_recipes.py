"""Recipes: the batch augmentations of cnnlab.data.augment, soft-target losses, the --recipe and
--ema options, and bit-identical resumption of a strong recipe with weight averaging."""

from __future__ import annotations

import json
import signal
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cnnlab import api
from cnnlab.config import RECIPES, AugmentParams, TrainConfig, augmentations, make_config
from cnnlab.data.augment import (
    _SALT_MIX,
    POLICY_GROUPS,
    apply_policies,
    mix_batch,
    mix_seed,
    policy_groups,
    random_erasing,
)
from cnnlab.data.loader import TensorLoader, seeded_generator
from cnnlab.errors import ConfigError
from cnnlab.tasks.classification import ClassificationTask


def _images(n: int, c: int = 3, s: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, c, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


# --- policies (v2 auto-augment, jitter) per group of images ---------------------------------------


def test_policy_groups_cut_the_global_batch_into_runs_of_consecutive_images():
    groups = policy_groups(16)
    assert [g for g, _ in groups] == list(range(POLICY_GROUPS))
    assert [rows.tolist() for _, rows in groups] == [[2 * i, 2 * i + 1] for i in range(8)]
    assert [rows.tolist() for _, rows in policy_groups(3)] == [[0], [1], [2]]  # one per image
    # rank 1 of 2 holds global rows 1, 3, 5, ...: its groups are those rows' global groups
    rank1 = policy_groups(8, shard=(1, 2))
    assert [(g, r.tolist()) for g, r in rank1] == [(i, [i]) for i in range(8)]


def test_one_policy_draw_per_group_not_per_batch():
    same = _images(1).expand(16, -1, -1, -1).contiguous()  # 16 copies of one image
    out = apply_policies(same, ["randaugment"], (0, 0, 0))
    for _, rows in policy_groups(16):  # within a group: one op, one magnitude
        assert all(torch.equal(out[rows[0]], out[r]) for r in rows)
    distinct = {out[rows[0]].numpy().tobytes() for _, rows in policy_groups(16)}
    assert len(distinct) >= 4  # v2 alone on the batch would give one


def test_policies_are_seeded_by_position_and_leave_the_global_generator_alone():
    x = _images(16)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = apply_policies(x, ["trivialaugment", "jitter"], (0, 2, 5))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, apply_policies(x, ["jitter", "trivialaugment"], (0, 2, 5)))
    assert not torch.equal(a, apply_policies(x, ["trivialaugment", "jitter"], (0, 2, 6)))
    assert a.dtype == torch.uint8 and a.shape == x.shape


def test_sharded_policies_equal_the_single_process_batch():
    x = _images(16)
    whole = apply_policies(x, ["autoaugment"], (1, 0, 3))
    for rank in (0, 1):
        part = apply_policies(x[rank::2], ["autoaugment"], (1, 0, 3), shard=(rank, 2))
        assert torch.equal(part, whole[rank::2])


# --- random erasing, one rectangle per image ------------------------------------------------------


def test_erasing_zeroes_one_rectangle_per_image_with_torchvision_statistics():
    from torchvision.transforms import v2

    n, s = 1500, 16
    x = torch.ones(n, 1, s, s)
    out = random_erasing(x, seeded_generator(0, 1), p=1.0)
    erased = out == 0
    for img in erased[:50, 0]:  # each erased set is one filled rectangle
        ys, xs = img.nonzero(as_tuple=True)
        if len(ys):
            h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            assert int(img.sum()) == int(h * w)
    ours = erased.float().mean((1, 2, 3))
    torch.manual_seed(0)
    ref = v2.RandomErasing(p=1.0, value=0)
    theirs = torch.stack([(ref(torch.ones(1, s, s)) == 0).float().mean() for _ in range(n)])
    assert ours.mean().item() == pytest.approx(theirs.mean().item(), abs=0.012)
    assert (ours > 0).float().mean().item() == pytest.approx(
        (theirs > 0).float().mean().item(), abs=0.03
    )
    # p: the share of images erased
    some = random_erasing(x, seeded_generator(0, 2), p=0.25)
    assert ((some == 0).flatten(1).any(1)).float().mean().item() == pytest.approx(
        0.25 * 0.99, abs=0.04
    )


def test_sharded_erasing_equals_the_single_process_batch():
    x = torch.randn(12, 3, 10, 10)
    whole = random_erasing(x, seeded_generator(4, 0, 1), p=0.5)
    part = random_erasing(x[1::3], seeded_generator(4, 0, 1), p=0.5, shard=(1, 3))
    assert torch.equal(part, whole[1::3])


# --- mixing and the soft-target loss --------------------------------------------------------------


def _ce(logits: np.ndarray, label: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """Per-sample cross-entropy by hand (float64), with label smoothing eps: target (1 - eps)
    one-hot + eps / K."""
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    k = logits.shape[1]
    target = np.eye(k)[label] * (1 - smoothing) + smoothing / k
    return -(target * logp).sum(1)


@pytest.mark.parametrize("names", [("mixup",), ("cutmix",)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_loss_is_the_hand_computed_mix_of_two_cross_entropies(names, smoothing):
    n, k = 8, 5
    x = torch.randn(n, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    mixed, soft = mix_batch(x, y, names, k, (0, 1, 2))
    lam = soft[0, y[0]].item()  # v2 pairs image i with image i - 1, one weight for the batch
    partner = y.roll(1)
    assert 0 < lam < 1
    expected = lam * np.eye(k)[y] + (1 - lam) * np.eye(k)[partner]
    np.testing.assert_allclose(soft.numpy(), expected, atol=1e-6)
    if names == ("mixup",):
        torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.roll(1, 0))
    else:  # a box of the partner image; lam is the share of the image outside it
        from_partner = (mixed == x.roll(1, 0)) & (mixed != x)
        assert from_partner[0, 0].float().mean().item() == pytest.approx(1 - lam, abs=1e-6)

    logits = torch.randn(n, k, dtype=torch.float64)

    class Fixed(torch.nn.Module):
        def forward(self, images):
            return logits.float()

    task = ClassificationTask(k, label_smoothing=smoothing)
    out = task.loss(Fixed(), mixed, soft)
    lg = logits.float().double().numpy()
    hand = lam * _ce(lg, y.numpy(), smoothing) + (1 - lam) * _ce(lg, partner.numpy(), smoothing)
    assert out["loss"].item() == pytest.approx(hand.mean(), rel=1e-5)
    # training accuracy on a mixed batch: the prediction against the larger share of the mix
    major = y if lam >= 0.5 else partner
    assert int(out["correct"]) == int((logits.argmax(1) == major).sum())


def test_loader_mixes_with_soft_targets_and_repeats_a_batch_when_resumed():
    imgs, targets = _images(24, c=1), torch.arange(24) % 4
    loader = TensorLoader(imgs, targets, torch.tensor([0.5]), torch.tensor([0.25]), 8,
                          shuffle=True, augment=RECIPES["strong"], seed=2, num_classes=4)  # fmt: skip
    full = list(loader.batches(1))
    resumed = list(loader.batches(1, start=1))
    for a, b in zip(full[1:], resumed, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x, soft, _ = full[0]
    assert soft.shape == (8, 4) and soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    assert not torch.equal(full[0][0], next(loader.batches(2))[0])  # another epoch, other draws
    with pytest.raises(ValueError, match="num_classes"):
        TensorLoader(imgs, targets, torch.zeros(1), torch.ones(1), 8, augment=("mixup",))


# --- options --------------------------------------------------------------------------------------


def test_recipe_joins_augment_names_and_bad_values_are_one_line_errors():
    cfg = make_config(TrainConfig, recipe="standard", augment="flip,crop")
    assert augmentations(cfg) == (*RECIPES["standard"], "flip")
    assert augmentations(make_config(TrainConfig, augment="none")) == ()
    assert augmentations(make_config(TrainConfig, recipe="strong")) == RECIPES["strong"]
    with pytest.raises(ConfigError, match=r"recipe='strng'.*did you mean: strong\?"):
        make_config(TrainConfig, recipe="strng")
    with pytest.raises(ConfigError, match=r"unknown augmentation 'mixpu' \(did you mean: mixup"):
        make_config(TrainConfig, augment="mixpu")
    with pytest.raises(ConfigError, match=r"option ema must be a decay in \(0, 1\).*got 1.5"):
        make_config(TrainConfig, ema=1.5)
    with pytest.raises(ConfigError, match="ema"):
        make_config(TrainConfig, ema="nan")
    assert make_config(TrainConfig, ema=0).ema == 0  # off
    with pytest.raises(ConfigError, match="loss=focal does not combine with augmentation 'mixup'"):
        make_config(TrainConfig, recipe="strong", loss="focal")


# --- the strengths: --mixup-alpha, --cutmix-alpha, --erasing-prob, --randaugment-*, --jitter ------


def _params(**options) -> AugmentParams:
    """The strengths a config with ``options`` hands the loader (through the config's checks)."""
    return AugmentParams.of(make_config(TrainConfig, **options))


def test_defaults_are_the_recipe_values_a_run_used_before_the_options():
    assert AugmentParams.of() == AugmentParams.of(TrainConfig()) == AugmentParams(
        mixup_alpha=0.2, cutmix_alpha=1.0, erasing_prob=0.25, randaugment_ops=2,
        randaugment_magnitude=9, jitter=0.4,
    )  # fmt: skip


def test_mixup_alpha_is_the_beta_that_draws_the_mixing_weight():
    """lam of a seeded batch equals torch's Beta(alpha, alpha) drawn from the same generator
    state (v2.MixUp draws nothing before it); another alpha draws another lam."""
    x = torch.randn(6, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])  # image 0 (class 0) is mixed with image 5 (class 2)
    key = (3, 1, 4)  # (seed, epoch, step)
    lams = []
    for alpha in (0.2, 0.7, 3.0):
        mixed, soft = mix_batch(x, y, ("mixup",), 3, key, _params(augment="mixup",
                                                                  mixup_alpha=alpha))  # fmt: skip
        lam = soft[0, 0].item()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(*key, _SALT_MIX))
            beta = torch.distributions.Beta(torch.tensor([alpha]), torch.tensor([alpha]))
            expected = beta.sample(()).item()
        assert lam == pytest.approx(expected, abs=1e-6)
        torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.roll(1, 0))
        lams.append(lam)
    assert len(set(lams)) == 3


def test_cutmix_and_randaugment_and_jitter_options_reach_the_v2_transforms(monkeypatch):
    from torchvision.transforms import v2

    made: dict[str, object] = {}
    for name in ("CutMix", "RandAugment", "ColorJitter"):
        original = getattr(v2, name)

        def spy(*args, _original=original, _name=name, **kw):
            made[_name] = _original(*args, **kw)
            return made[_name]

        monkeypatch.setattr(v2, name, spy)
    params = _params(recipe="strong", cutmix_alpha=0.5, randaugment_ops=3,
                     randaugment_magnitude=20, jitter=0.1)  # fmt: skip
    x = _images(4)
    apply_policies(x, ["randaugment", "jitter"], (0, 0, 0), params=params)
    mix_batch(x.float(), torch.arange(4), ("cutmix",), 4, (0, 0, 0), params)
    assert made["CutMix"].alpha == 0.5
    assert (made["RandAugment"].num_ops, made["RandAugment"].magnitude) == (3, 20)
    assert made["RandAugment"].num_magnitude_bins == 31  # magnitude 30 is the strongest bin
    jitter = made["ColorJitter"]
    assert jitter.brightness == jitter.contrast == jitter.saturation == pytest.approx((0.9, 1.1))


def test_randaugment_magnitude_changes_how_far_the_images_move():
    """The same seed draws the same ops at any magnitude (v2 picks ops first); magnitude 0 makes
    the geometric and colour ops identities, 30 their strongest: the images move further."""
    x = _images(16, s=16)
    moved = []
    for magnitude in (0, 30):
        params = _params(augment="randaugment", randaugment_magnitude=magnitude)
        out = apply_policies(x, ["randaugment"], (0, 0, 1), params=params)
        moved.append((out.float() - x.float()).abs().mean().item())
    assert moved[1] > moved[0] + 10  # grey levels out of 255


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_erasing_prob_0_erases_no_image_and_1_every_image(prob):
    n, s = 32, 16
    # 204 / 255 = 0.8, normalised (0.8 - 0.5) / 0.25 = 1.2; erased pixels are 0
    images = torch.full((n, 1, s, s), 204, dtype=torch.uint8)
    loader = TensorLoader(images, torch.zeros(n, dtype=torch.int64), torch.tensor([0.5]),
                          torch.tensor([0.25]), n, augment=("erasing",),
                          augment_params=_params(augment="erasing", erasing_prob=prob))  # fmt: skip
    x, _, _ = next(loader.batches(0))
    erased = (x == 0).flatten(1).sum(1)  # pixels per image
    assert torch.all((x == 0) | torch.isclose(x, torch.tensor(1.2)))
    if prob == 0.0:
        assert erased.sum() == 0
    else:  # one rectangle each, 2-33 % of the 256 pixels (rounded sides)
        assert erased.min() >= 1 and erased.max() <= 0.33 * s * s * 1.3


def test_bad_strengths_are_one_line_errors_naming_the_option_and_its_range():
    bad = {
        "mixup_alpha": (0, r"option mixup_alpha must be a number > 0 .*got 0"),
        "cutmix_alpha": ("nan", r"option cutmix_alpha must be a number > 0 .*got nan"),
        "erasing_prob": (1.5, r"option erasing_prob must be in \[0, 1\], got 1.5"),
        "jitter": (-0.1, r"option jitter must be in \[0, 1\], got -0.1"),
        "randaugment_ops": (0, r"option randaugment_ops must be an integer >= 1, got 0"),
        "randaugment_magnitude": (31, r"randaugment_magnitude must be an integer in 0..30 .*31"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ConfigError, match=message) as err:
            make_config(TrainConfig, recipe="strong", **{key: value})
        assert "\n" not in str(err.value)
    assert make_config(TrainConfig, recipe="strong", erasing_prob=0, jitter=1).erasing_prob == 0


def test_a_strength_without_its_augmentation_says_what_turns_it_on():
    cases = {
        ("mixup_alpha", 0.4): "--augment mixup or --recipe standard / strong",
        ("cutmix_alpha", 0.5): "--augment cutmix or --recipe strong",
        ("erasing_prob", 0.1): "--augment erasing or --recipe standard / strong",
        ("randaugment_magnitude", 12): "--augment randaugment or --recipe strong",
        ("jitter", 0.2): "--augment jitter or --recipe strong",
    }
    for (key, value), turn_on in cases.items():
        with pytest.raises(ConfigError) as err:
            make_config(TrainConfig, recipe="light", **{key: value})
        assert str(err.value) == (
            f"option {key}={value} acts only on augmentation {AUGMENT_OF[key]!r}, which this run "
            f"does not use; turn it on with {turn_on}, or leave {key} out"
        )
    # with the augmentation in use, by recipe or by --augment, the option is taken
    assert make_config(TrainConfig, recipe="standard", mixup_alpha=0.4).mixup_alpha == 0.4
    assert make_config(TrainConfig, augment="crop,jitter", jitter=0.2).jitter == 0.2
    assert make_config(TrainConfig, mixup_alpha=0.2).mixup_alpha == 0.2  # the default: no error


def test_a_strength_typed_at_its_default_without_its_augmentation_is_refused(capsys):
    """`--mixup-alpha 0.2` (the default) without mixup: the config cannot tell it from "not
    given", the command line can; each training command refuses it in one line, before any
    work. A config.json rerun (every field present, at defaults) and a resume are not refused."""
    from cnnlab.cli import main

    for argv in (
        ["train", "--data", "builtin:digits", "--mixup-alpha", "0.2"],
        ["finetune", "--init-from", "nowhere", "--data", "builtin:digits", "--jitter", "0.4"],
        ["video", "train", "--erasing-prob", "0.25"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "acts only on augmentation" in err[0], err
    from cnnlab.cli import _train_overrides, build_parser

    args = build_parser().parse_args(["train", "--mixup-alpha", "0.2", "--augment", "crop,mixup"])
    assert "mixup_alpha" in _train_overrides(args)  # with its augmentation: taken
    args = build_parser().parse_args(["train", "--mixup-alpha", "0.2", "--resume", "RUN"])
    assert "mixup_alpha" in _train_overrides(args)  # a resume: the run's own decide


AUGMENT_OF = {"mixup_alpha": "mixup", "cutmix_alpha": "cutmix", "erasing_prob": "erasing",
              "randaugment_magnitude": "randaugment", "jitter": "jitter"}  # fmt: skip


def test_strength_options_on_the_command_line_and_in_config_json(tmp_path):
    from cnnlab.cli import build_parser

    args = build_parser().parse_args(
        ["train", "--recipe", "strong", "--mixup-alpha", "0.4", "--randaugment-magnitude", "12",
         "--erasing-prob", "0"]
    )  # fmt: skip
    assert (args.mixup_alpha, args.randaugment_magnitude, args.erasing_prob) == ("0.4", "12", "0")
    cfg = make_config(TrainConfig, recipe="strong", mixup_alpha="0.4", randaugment_magnitude="12")
    assert (cfg.mixup_alpha, cfg.randaugment_magnitude) == (0.4, 12)
    saved = json.loads(json.dumps(cfg.to_dict()))  # what config.json holds
    assert saved["mixup_alpha"] == 0.4 and saved["randaugment_magnitude"] == 12
    assert make_config(TrainConfig, **saved) == cfg


@pytest.mark.parametrize("command", ["segment", "detect"])
def test_segmentation_and_detection_reject_mixing_in_one_line(command):
    from cnnlab.tasks.configs import DetectConfig, SegmentConfig

    cls = SegmentConfig if command == "segment" else DetectConfig
    with pytest.raises(ConfigError, match="^--augment cutmix: mixing two images") as err:
        make_config(cls, augment="flip,cutmix")
    assert "\n" not in str(err.value)


# --- end to end: a strong recipe with EMA, interrupted and resumed --------------------------------

TINY = dict(data="builtin:digits", shots=6, model="lenet5", batch_size=16, lr=0.05, report=False,
            seed=0, deterministic=True, epochs=2)  # fmt: skip


def _interrupt_after_epoch_1(monkeypatch) -> None:
    """SIGTERM (the real signal path) at the first step of epoch 2."""
    from cnnlab.engine import callbacks as cbs

    original = cbs.GracefulInterrupt.on_fit_start

    def start_then_arm(self, trainer):
        original(self, trainer)
        state = trainer.state

        class Kill(cbs.Callback):
            def on_batch_end(self, t, loss, correct, size):
                if state.epoch == 1 and state.step == 1:
                    signal.raise_signal(signal.SIGTERM)

        trainer.callbacks.append(Kill())

    monkeypatch.setattr(cbs.GracefulInterrupt, "on_fit_start", start_then_arm)


#: non-default strengths of every augmentation of the strong recipe
STRENGTHS = dict(mixup_alpha=0.4, cutmix_alpha=0.5, erasing_prob=0.5, randaugment_ops=3,
                 randaugment_magnitude=14, jitter=0.2)  # fmt: skip


@pytest.mark.slow  # ~3 s: two short runs and a resumed one
@pytest.mark.parametrize("ema, strengths", [(None, {}), (0.999, {}), (None, STRENGTHS)])
def test_strong_recipe_resumed_after_epoch_1_is_bit_identical(ema, strengths, tmp_path,
                                                              monkeypatch):  # fmt: skip
    from cnnlab.data import loader

    cfg = dict(TINY, out=str(tmp_path), recipe="strong", ema=ema, **strengths)
    seen = []  # the strengths the training loader hands to the mixing

    def mix_batch_spy(*args):
        seen.append(args[-1])
        return mix_batch(*args)

    monkeypatch.setattr(loader, "mix_batch", mix_batch_spy)
    full = api.train(name="full", **cfg)
    monkeypatch.undo()
    assert seen and set(seen) == {AugmentParams.of(SimpleNamespace(**strengths))}
    _interrupt_after_epoch_1(monkeypatch)
    with pytest.raises(api.Interrupted):
        api.train(name="part", **cfg)
    monkeypatch.undo()
    resumed = api.train(resume=str(tmp_path / "part"))
    a = load_file(full.run_dir / "checkpoints" / "epoch-0002.safetensors")
    b = load_file(resumed.run_dir / "checkpoints" / "epoch-0002.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    record = json.loads((full.run_dir / "run.json").read_text())
    assert record["augmentations"] == list(RECIPES["strong"])
    # config.json records the strengths, so the resumed run used them too
    saved = json.loads((resumed.run_dir / "config.json").read_text())
    assert {k: saved[k] for k in STRENGTHS} == (strengths or AugmentParams.of().__dict__)
    if ema is None:
        assert "val_ema_accuracy" not in full.history[-1] and record["ema_decay"] is None
        return
    # the averaged weights: validated each epoch, resumed exactly, the better of the two kept
    assert [h["val_ema_loss"] for h in resumed.history] == [h["val_ema_loss"] for h in full.history]
    best_a = load_file(full.run_dir / "checkpoints" / "best.safetensors")
    best_b = load_file(resumed.run_dir / "checkpoints" / "best.safetensors")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    final = record["final_weights"]
    assert record["ema_decay"] == 0.999 and final["weights"] in ("ema", "raw")
    chosen = max(full.history, key=lambda h: max(h["val_accuracy"], h["val_ema_accuracy"]))
    key = "val_ema_accuracy" if final["weights"] == "ema" else "val_accuracy"
    assert final["value"] == chosen[key]


# --- weight averaging (--ema) ---------------------------------------------------------------------


class _Batches:
    """A loader of fixed batches (what Trainer.fit needs: len and batches(epoch, start))."""

    def __init__(self, batches):
        self.items = batches

    def __len__(self):
        return len(self.items)

    def batches(self, epoch=0, start=0):
        yield from self.items[start:]


def test_ema_equals_a_hand_computed_average_of_the_weights_after_each_optimizer_step():
    from cnnlab.engine.callbacks import WeightAveraging
    from cnnlab.engine.trainer import Callback, Trainer

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3)
    )
    decay = 0.9
    ema = WeightAveraging(model, decay)
    seen: list[dict[str, np.ndarray]] = []

    class Record(Callback):  # the trained weights after every optimizer step
        def on_optimizer_step(self, trainer):
            seen.append(
                {k: v.detach().double().numpy().copy() for k, v in model.state_dict().items()}
            )

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g), torch.arange(8))
               for _ in range(6)]  # fmt: skip
    trainer = Trainer(model, ClassificationTask(3), optimizer, scheduler, device=torch.device("cpu"),
                      callbacks=[ema, Record()], accumulate_grad_batches=2)  # fmt: skip
    trainer.fit(_Batches(batches), None, epochs=1)
    assert len(seen) == 3 and int(ema.averaged.n_averaged) == 3  # per optimizer step, not batch
    averaged, moved, warmed = ema.weights(), 0, 0
    for name, first in seen[0].items():
        if not np.issubdtype(first.dtype, np.floating) or name.endswith("num_batches_tracked"):
            continue
        reference = fixed = first  # the weights after step 1, then d_t * ema + (1 - d_t) * weights
        for t, step in enumerate(seen[1:], start=1):  # t updates averaged before this one
            d = min(decay, (1 + t) / (10 + t))  # warm-up: 2/11, 3/12 (below 0.9 until t = 80)
            reference = d * reference + (1 - d) * step[name]
            fixed = decay * fixed + (1 - decay) * step[name]
        np.testing.assert_allclose(averaged[name].double().numpy(), reference, rtol=1e-5, atol=1e-6)
        warmed += not np.allclose(fixed, reference)  # the control: a fixed decay is another average
        moved += not np.allclose(reference, seen[-1][name])  # the average is not the last weights
    assert moved >= 4  # (the bias before BatchNorm gets no gradient and stays where it was)
    assert warmed >= 4


def test_best_checkpoint_holds_whichever_of_trained_and_averaged_weights_is_better(tmp_path):
    from cnnlab.engine.callbacks import Checkpoint, WeightAveraging
    from cnnlab.engine.checkpoint import CheckpointManager, read_weights
    from cnnlab.engine.trainer import LoopState

    model = torch.nn.Linear(2, 2)
    ema = WeightAveraging(model, 0.5)
    ema.averaged.update_parameters(model)
    with torch.no_grad():
        model.weight.add_(1.0)  # trained and averaged weights now differ
    ckpt = Checkpoint(CheckpointManager(tmp_path), lambda: {"model": "linear"}, "val_accuracy")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleNamespace(
        model=model, callbacks=[ema, ckpt], state=LoopState(), optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.ConstantLR(optimizer), scaler=torch.amp.GradScaler("cpu", enabled=False),
    )  # fmt: skip

    def epoch(raw: float, averaged: float):
        ckpt.on_epoch_end(trainer, {"val_accuracy": raw, "val_ema_accuracy": averaged})
        trainer.state.epoch += 1
        return read_weights(tmp_path / "best.safetensors")

    weights, meta = epoch(0.5, 0.7)  # averaged better
    assert meta["weights"] == "ema" and torch.equal(weights["weight"], ema.weights()["weight"])
    assert ckpt.final_weights() == {"file": "best.safetensors", "weights": "ema", "epoch": 1,
                                    "monitor": "val_accuracy", "value": 0.7}  # fmt: skip
    weights, meta = epoch(0.6, 0.65)  # neither beats 0.7: best unchanged
    assert meta["weights"] == "ema" and ckpt.best_epoch == 1
    weights, meta = epoch(0.9, 0.8)  # the trained weights win
    assert "weights" not in meta and torch.equal(weights["weight"], model.weight.detach())
    assert ckpt.final_weights()["weights"] == "raw" and ckpt.final_weights()["epoch"] == 3


OTHER_TASKS = {  # tiny runs of the other tasks on the same fit shell (as tests/test_resume_tasks.py)
    "segment": ("segment_train", {"data": "builtin:shapes?n=24&size=16", "encoder": "lenet5",
                                  "image_size": 16, "batch_size": 4, "augment": ("flip",)}),
    "video": ("video_train", {"data": "builtin:moving-shapes?n=20&frames=4&size=16&speed=0.5",
                              "model": "r3d_small", "batch_size": 2, "val_fraction": 0.2,
                              "test_fraction": 0.0, "augment": ("crop", "erasing", "mixup", "cutmix")}),
}  # fmt: skip


@pytest.mark.slow  # 30-60 s each on two shared cores
@pytest.mark.parametrize("task", sorted(OTHER_TASKS))
def test_ema_validates_beside_the_trained_weights_in_other_tasks(task, tmp_path):
    function, options = OTHER_TASKS[task]
    run = getattr(api, function)(out=str(tmp_path), epochs=2, ema=0.5, report=False, device="cpu",
                                 seed=1, **options)  # fmt: skip
    last = run.history[-1]
    names = [k.removeprefix("val_") for k in last if k.startswith("val_") and "_ema_" not in k]
    assert names and all(f"val_ema_{n}" in last for n in names)
    final = json.loads((run.run_dir / "run.json").read_text())["final_weights"]
    assert final["weights"] in ("ema", "raw") and final["file"] == "best.safetensors"
