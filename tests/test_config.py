import json
import re

import pytest

from cnnlab.config import TrainConfig, make_config
from cnnlab.errors import ConfigError


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match=r"unknown option 'epoch'.*did you mean: epochs"):
        make_config(TrainConfig, epoch=3)


def test_literal_values_are_checked_with_suggestion():
    with pytest.raises(ConfigError, match=r"optimizer='adamx'.*did you mean: adamw"):
        make_config(TrainConfig, optimizer="adamx")


def test_merge_order_defaults_file_overrides(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": 3, "lr": 0.2, "augment": ["crop", "flip"]}))
    cfg = make_config(TrainConfig, f, lr="0.01")
    assert cfg.epochs == 3  # from the file
    assert cfg.lr == 0.01  # the command line wins over the file
    assert cfg.batch_size == TrainConfig().batch_size  # default
    assert cfg.augment == ("crop", "flip")


def test_cli_text_is_coerced_and_bad_values_name_the_option():
    cfg = make_config(
        TrainConfig, epochs="4", deterministic="true", augment="crop,flip", grad_clip="1.5"
    )
    assert (cfg.epochs, cfg.deterministic, cfg.augment, cfg.grad_clip) == (
        4,
        True,
        ("crop", "flip"),
        1.5,
    )
    with pytest.raises(ConfigError, match="option epochs expects an integer"):
        make_config(TrainConfig, epochs="ten")
    with pytest.raises(ConfigError, match="val_fraction"):
        make_config(TrainConfig, val_fraction=1.5)
    with pytest.raises(ConfigError, match="unknown augmentation 'flp'.*flip"):
        make_config(TrainConfig, augment="flp")


def test_lr_auto_is_accepted_and_other_words_are_not():
    assert make_config(TrainConfig, lr="auto").lr == "auto"
    assert make_config(TrainConfig, lr="0.2").lr == 0.2
    with pytest.raises(ConfigError, match="lr must be a number or 'auto'"):
        make_config(TrainConfig, lr="fast")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00", r"photo\.png is not text \(not UTF-8\)"),
        ("list.json", b"[1, 2]", r"list\.json holds a JSON list, not an object of options"),
        ("options.cfg", b"epochs = 3", r"options\.cfg is not valid JSON"),  # not 'CFG'
        ("c.toml", b"epochs = ", r"c\.toml is not valid TOML"),
    ],
)
def test_a_config_file_that_is_not_an_object_of_options_is_one_error(
    tmp_path, name, content, message
):
    """`--config photo.png` was a UnicodeDecodeError traceback and `--config list.json` a
    TypeError one; both are now a ConfigError naming the file (exit 2 on the command line). A
    file named neither .json nor .toml is read as JSON, and said so."""
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        make_config(TrainConfig, f)
    assert f.read_bytes() == content


def test_an_option_name_of_another_toolkit_is_answered_with_cnnlabs_name():
    """`learning_rate` in a config file was answered "did you mean: erasing_prob, private?"."""
    from cnnlab.errors import close_matches

    with pytest.raises(ConfigError, match=r"unknown option 'learning_rate' \(did you mean: lr, "):
        make_config(TrainConfig, learning_rate=0.1)
    assert close_matches("--imgsz", ["--image-size", "--lr"]).startswith(
        " (did you mean: --image-size"
    )
    assert close_matches("lr0", ["image_size", "weight_decay"]) == ""  # only a name that exists


# -- ranges: a value of the right type but outside what the option means ---------------------------
@pytest.mark.parametrize(
    ("cls_name", "key", "value", "message"),
    [
        ("TrainConfig", "grad_clip", "-1", r"option grad_clip must be > 0 .*got -1"),
        ("TrainConfig", "grad_clip", "0", r"option grad_clip must be > 0"),
        ("TrainConfig", "momentum", "2", r"option momentum must be in \[0, 1\), got 2"),
        ("TrainConfig", "momentum", "1", r"option momentum must be in \[0, 1\)"),
        ("TrainConfig", "momentum", "-0.1", r"option momentum must be in \[0, 1\)"),
        ("TrainConfig", "weight_decay", "-1e-4", r"option weight_decay must be >= 0"),
        ("TrainConfig", "warmup_epochs", "-1", r"option warmup_epochs must be >= 0"),
        ("TrainConfig", "early_stopping", "-1", r"option early_stopping must be >= 0"),
        ("TrainConfig", "seed", "-1", r"option seed must be in 0\.\.4294967295, got -1"),
        ("TrainConfig", "seed", str(2**32), r"option seed must be in 0\.\.4294967295"),
        ("TrainConfig", "devices", "0", r"option devices must be > 0"),
        ("TrainConfig", "in_channels", "0", r"option in_channels must be > 0"),
        ("TrainConfig", "max_image_pixels", "0", r"option max_image_pixels must be > 0"),
        ("TrainConfig", "head_epochs", "-1", r"option head_epochs must be >= 0"),
        ("TrainConfig", "label_smoothing", "1", r"option label_smoothing must be in \[0, 1\)"),
        ("TrainConfig", "ema", "1", r"option ema must be a decay in \(0, 1\)"),
        ("TrainConfig", "lr", "nan", r"option lr must be > 0, got nan"),
        ("TrainConfig", "lr", "inf", r"option lr must be > 0, got inf"),
        ("TrainConfig", "weight_decay", "nan", r"option weight_decay must be >= 0, got nan"),
        ("SegmentConfig", "momentum", "1.5", r"option momentum must be in \[0, 1\)"),
        ("SegmentConfig", "in_channels", "0", r"option in_channels must be > 0"),
        ("SegmentConfig", "max_image_pixels", "-5", r"option max_image_pixels must be > 0"),
        ("SegmentConfig", "dice_weight", "-1", r"option dice_weight must be >= 0"),
        ("DetectConfig", "grad_clip", "-10", r"option grad_clip must be > 0"),
        ("DetectConfig", "in_channels", "0", r"option in_channels must be > 0"),
        ("VideoConfig", "weight_decay", "-1", r"option weight_decay must be >= 0"),
        ("VideoConfig", "seed", "-3", r"option seed must be in 0\.\."),
    ],
)
def test_numeric_options_out_of_range_are_refused(cls_name, key, value, message):
    """`--grad-clip -1` was accepted and flipped every gradient (the loss rose), `--momentum 2`
    diverged, a negative seed was a scikit-learn traceback; each is now a one-line ConfigError
    naming the option, for every task's config (the checks live in RunConfig and each task's)."""
    from cnnlab.tasks import configs

    cls = TrainConfig if cls_name == "TrainConfig" else getattr(configs, cls_name)
    with pytest.raises(ConfigError, match=message):
        make_config(cls, **{key: value})


def test_unset_words_and_edge_values_stay_accepted():
    cfg = make_config(TrainConfig, grad_clip="none", ema="none", momentum="0", weight_decay="0")
    assert (cfg.grad_clip, cfg.ema, cfg.momentum, cfg.weight_decay) == (None, None, 0.0, 0.0)
    assert make_config(TrainConfig, grad_clip="0.5", seed=str(2**32 - 1), early_stopping=0)


# -- types: a config file's (or a keyword's) value is refused rather than converted with a loss ----
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("epochs = 1.5", r"option epochs expects an integer, got 1\.5 \(a float\)"),
        ("epochs = 2.0", r"option epochs expects an integer, got 2\.0"),  # as --epochs 2.0
        ("epochs = true", r"option epochs expects an integer, got true \(a boolean\)"),
        ("batch_size = 8.9", r"option batch_size expects an integer, got 8\.9"),
        ("seed = 1.7", r"option seed expects an integer, got 1\.7"),
        ("lr = true", r"option lr expects a number, got true \(a boolean\)"),
        ("val_fraction = true", r"option val_fraction expects a number, got true"),
        ("deterministic = 1", r"option deterministic expects true/false, got 1 \(an integer\)"),
        ("compile = 1", r"option compile expects true/false, got 1"),
        ("name = 5", r"option name expects text, got 5 \(an integer\)"),
    ],
)
def test_a_config_file_value_of_the_wrong_type_names_file_key_and_value(tmp_path, line, message):
    """`epochs = 1.5` in a TOML file trained 1 epoch, `epochs = true` 1, `batch_size = 8.9` 8 and
    `lr = true` at 1.0, while `--epochs 1.5` was refused: an int option takes an integer, a float
    option an int or a finite float, never a boolean, from a file as on the command line."""
    f = tmp_path / "c.toml"
    f.write_text(line + "\n")
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(f))}: {message}"):
        make_config(TrainConfig, f)


@pytest.mark.parametrize("cls_name", ["SegmentConfig", "DetectConfig", "VideoConfig"])
def test_every_task_config_refuses_lossy_values(tmp_path, cls_name):
    from cnnlab.tasks import configs

    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": 1.5}))
    with pytest.raises(ConfigError, match=r"option epochs expects an integer, got 1\.5"):
        make_config(getattr(configs, cls_name), f)
    with pytest.raises(ConfigError, match=r"option lr expects a number, got true"):
        make_config(getattr(configs, cls_name), lr=True)  # a keyword, as the Python API passes it


def test_exact_values_keep_their_meaning(tmp_path):
    """What converts without loss still does: an int for a float option, a word for a Literal,
    the command line's text, a numpy integer, a path for a text option."""
    import numpy as np

    f = tmp_path / "c.toml"
    f.write_text('lr = 1\nprecision = 16\nepochs = 3\nname = "r1"\n')
    cfg = make_config(TrainConfig, f, batch_size=np.int64(16), out=tmp_path)
    assert (cfg.lr, cfg.precision, cfg.epochs, cfg.name, cfg.batch_size) == (1.0, "16", 3, "r1", 16)
    assert isinstance(cfg.lr, float) and cfg.out == str(tmp_path)
    f.write_text("epochs = 1.5\n")  # a wrong value the command line overrides is not an error
    assert make_config(TrainConfig, f, epochs="2").epochs == 2


# -- the run folder's name stays inside --out ------------------------------------------------------
@pytest.mark.parametrize("name", ["../escape", "a/b", "a\\b", "", " ", ".", ".."])
def test_a_run_name_that_leaves_out_or_is_empty_is_refused(name):
    """`--out runs --name ../escape` wrote the run beside runs/, `--name ''` made runs/-2."""
    with pytest.raises(
        ConfigError, match=r"^option name must be one folder name inside option out"
    ):
        make_config(TrainConfig, out="runs", name=name)


def test_an_ordinary_run_name_is_accepted():
    assert make_config(TrainConfig, name="digits-1.5_a b").name == "digits-1.5_a b"


def test_the_run_name_error_names_the_flag_and_exits_2(tmp_path):
    from cli_process import assert_user_error

    assert_user_error("train", "--data", "builtin:digits", "--out", str(tmp_path),
                      "--name", "../escape", names=["option --name", "option --out", "'../escape'"])  # fmt: skip
    assert list(tmp_path.parent.glob("escape*")) == []


# -- image size: the config's minimum is the models' --------------------------------------------------
def test_the_smallest_image_size_a_config_takes_is_the_one_the_models_take():
    """`--image-size 3` said "must be >= 8", then `--image-size 8` "the models need at least 16 px":
    the config now refuses below the models' own minimum, and that minimum builds a model."""
    from cnnlab.config import MIN_IMAGE_SIZE
    from cnnlab.models import create_model
    from cnnlab.tasks.configs import SegmentConfig, VideoConfig

    for cls in (TrainConfig, SegmentConfig, VideoConfig):
        with pytest.raises(ConfigError, match=rf"image_size must be >= {MIN_IMAGE_SIZE} pixels"):
            make_config(cls, image_size=MIN_IMAGE_SIZE - 1)
        assert make_config(cls, image_size=MIN_IMAGE_SIZE).image_size == MIN_IMAGE_SIZE
    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=MIN_IMAGE_SIZE)
    assert model is not None


# -- cnnlab cv's own option from its config file ---------------------------------------------------
def test_cv_reads_folds_from_its_config_file(tmp_path):
    """`cnnlab cv --config c.toml` with `folds = 2` in the file said "unknown option 'folds'";
    the file's folds is read (and checked) as --folds is, and --folds wins over it."""
    from cnnlab.api import cross_validate
    from cnnlab.errors import DataError

    f = tmp_path / "c.toml"
    f.write_text(f'folds = 1\ndata = "{tmp_path / "missing"}"\n')
    with pytest.raises(ConfigError, match=r"option folds must be >= 2, got 1"):
        cross_validate(f)
    f.write_text(f'folds = 2.0\ndata = "{tmp_path / "missing"}"\n')
    with pytest.raises(ConfigError, match=r"c\.toml: option folds expects an integer >= 2"):
        cross_validate(f)
    # past the folds and the options: the missing data folder is the first thing wrong
    for folds in (None, 3):
        f.write_text(f'folds = {2 if folds is None else 1}\ndata = "{tmp_path / "missing"}"\n')
        with pytest.raises((ConfigError, DataError), match="missing"):
            cross_validate(f, folds=folds, out=str(tmp_path / "cv"))
    assert not (tmp_path / "cv").exists()
