import json

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
