"""Every command-line flag that a message suggests exists on the command(s) that can print it.

The scan reads every string literal of src/cnnlab (docstrings and argparse help texts aside), finds
the `--flags` in it and checks them against the real parser (`cnnlab.cli.build_parser`):

* a literal that names its command (`cnnlab train --devices 2`) is checked against that command;
* in cli.py, a literal inside an `@command("x")` handler is checked against `x`;
* every other literal against the commands listed for its function in `PRINTED_BY` below: the
  commands whose code path reaches that function (judged from the call graph; a function only
  reached when the user passed a flag lists the commands that have it). A module or function that
  suggests flags and is missing from the table fails the test, so new messages get a row.

Flags of other programs (torchrun's) are listed in `FOREIGN`.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from cnnlab.cli import build_parser

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
NAMED = re.compile(r"cnnlab ((?:[a-z][a-z-]*)(?: (?:train|evaluate|predict|track|check))?)")
FOREIGN = {
    "--nproc-per-node",
    "--standalone",
    "--max-restarts",
    "--help",
    "--shm-size",
}  # + Docker's

# all through api.train with TrainConfig options (cv: every fold)
TRAINERS = ("train", "finetune", "transfer-study", "cv")
TASK_TRAINERS = ("segment train", "detect train", "video train")
DECODERS = ("data check", *TRAINERS, "lr-find", "segment train", "detect train", "serve")
DEVICE = (
    *TRAINERS,
    "lr-find",
    "evaluate",
    "predict",
    "embed",
    "explain",
    "serve",
    "segment train",
    "segment evaluate",
    "segment predict",
    "detect train",
    "detect evaluate",
    "detect predict",
)
DISTRIBUTED = ("train", "finetune")  # --devices / torchrun
INFERENCE = (
    "evaluate",
    "predict",
    "serve",
    "segment evaluate",
    "segment predict",
    "detect evaluate",
)
EVALUATORS = ("evaluate", "segment evaluate", "detect evaluate", "video evaluate")
#: the commands that write files into a folder or file --out names (cnnlab.run.claim_outputs)
OUT_WRITERS = ("predict", "segment predict", "detect predict", "explain", "video predict",
               "video track", "export", "conv", "embed", "transfer-study", "tune")  # fmt: skip
PRINTED_BY: dict[str, tuple[str, ...]] = {
    "engine/devices.py:resolve_device": DEVICE,  # only when --device cuda/mps was asked for
    "config.py:score_threshold_of": ("detect predict", "explain"),  # only with --score-threshold
    "api.py:_score_threshold_option": ("predict", "explain"),  # --score-threshold of another task
    # --max-bad-fraction: every command that decodes a training dataset, and every evaluate
    # (--data: another dataset, judged as training judges it)
    "data/scan.py:bad_fraction_verdict": (
        "data check",
        *TRAINERS,
        "lr-find",
        *TASK_TRAINERS,
        *EVALUATORS,
        "embed",
    ),
    # FEW_SAMPLES_FIX (--val-fraction): training's warning on few validation images; the report's
    # caution (which evaluate redraws too) says it as advice for training again
    "metrics/calibration.py:<module>": TRAINERS,
    # --split NAME of a run that lacks it
    "errors.py:no_such_split": ("detect evaluate", "segment evaluate", "video evaluate", "embed"),
    "engine/devices.py:_check": (*TRAINERS, "lr-find", *TASK_TRAINERS, *INFERENCE),  # --precision
    "engine/loaders.py:use_streaming": TRAINERS,
    "engine/loaders.py:fits_on_device": TRAINERS,
    "engine/checkpoint.py:for_policy": (*TRAINERS, *TASK_TRAINERS),  # --keep
    "engine/trainer.py:check_monitor": (*TRAINERS, *TASK_TRAINERS),  # --monitor
    "engine/resume.py:resume_target": ("train", "finetune", *TASK_TRAINERS),  # only with --resume
    "engine/resume.py:resumed_config": ("train", "finetune", *TASK_TRAINERS),  # only with --resume
    "engine/resume.py:check_unfinished": (
        "train",
        "finetune",
        *TASK_TRAINERS,
    ),  # only with --resume
    "detect.py:_image_size": ("detect train",),  # images of mixed sizes: --image-size
    "transfer/lr_find.py:check_plot_path": ("lr-find",),  # only with --plot
    "video/train.py:_builtin_clips": ("video train",),  # builtin clips shorter than --frames
    # the run's own dataset, read again: every evaluate, and embed
    "run.py:source_config": (*EVALUATORS, "embed"),
    "run.py:relocated_data": (*EVALUATORS, "embed"),  # only with --relocated-data
    "run.py:check_one_dataset": (*EVALUATORS, "embed"),
    "tasks/classify/train.py:_prepare": TRAINERS,
    "tasks/classify/train.py:_configure": TRAINERS,  # only with --lr auto
    "engine/fit.py:fit": (*TRAINERS, *TASK_TRAINERS),  # "lower --batch-size", "--resume RUN"
    "engine/assembly.py:tensorboard": (*TRAINERS, *TASK_TRAINERS),  # only with --tensorboard
    "engine/tracking.py": (*TRAINERS, *TASK_TRAINERS),  # only with --track mlflow
    "config.py:__post_init__": (*TRAINERS, *TASK_TRAINERS),  # --track-uri alone (not on lr-find)
    # deeplabv3 with fewer than 2 images per batch (--batch-size, --model): SegmentConfig
    "tasks/configs.py:__post_init__": ("segment train",),
    # --mixup-alpha ... without its augmentation: every command that builds a TrainConfig or a
    # VideoConfig
    "config.py:check_augment_options": (*TRAINERS, "lr-find", "tune", "video train"),
    "config.py:check_unused_strengths": (*TRAINERS, "lr-find", "tune", "video train"),
    "config.py:_by_recipe": (*TRAINERS, "lr-find", "tune"),  # configs with a recipe field
    "tasks/configs.py:reject_mixing": ("segment train", "detect train"),  # --augment mixup
    "runs_table.py": ("runs",),
    "cli/runs.py": ("runs",),
    "tasks/classify/evaluate.py:evaluate": ("evaluate",),
    "tasks/classify/predict.py:predict": ("predict",),
    "tasks/classify/predict.py:predictions": ("predict",),
    "engine/predict.py:predict_files": ("predict",),  # --top-k (a run or an exported model)
    "cli/__init__.py:_score_predictions_csv": ("metrics",),  # --threshold
    "transfer/embed.py:embed": ("embed",),  # --split
    "tasks/classify/operating_point.py": ("evaluate",),  # --positive / --target / replacing
    "api.py:evaluate": ("evaluate",),  # --positive / --target of a run of another task
    "api.py:_tta_option": ("evaluate", "predict"),  # --tta of a run of another task
    "engine/tta.py:parse_tta": (  # --tta VIEWS
        "evaluate",
        "predict",
        "serve",
        "segment evaluate",
        "segment predict",
        "detect evaluate",
        "detect predict",
    ),  # fmt: skip
    # --tta crop on a segmentation or detection run
    "engine/tta.py:check_segment_tta": (
        "evaluate",
        "predict",
        "serve",
        "segment evaluate",
        "segment predict",
    ),  # fmt: skip
    "engine/tta.py:check_detect_tta": (
        "evaluate",
        "predict",
        "serve",
        "detect evaluate",
        "detect predict",
    ),  # fmt: skip
    # --encoder-variant small-input with a timm: encoder (a run records no such encoder)
    "models/segmentation.py:create_segmentation_model": ("segment train",),
    # --backbone-variant small-input / --init-from with a timm: backbone
    "models/detection.py:_timm_backbone": ("detect train",),
    "tasks/registry.py:_video": ("predict",),  # a video run given to `cnnlab predict`
    "api.py:predict": ("predict",),
    "run.py:evaluation_dir": ("evaluate", "segment evaluate", "detect evaluate", "video evaluate"),
    # the one door of output folders (--out, or a default folder whose fix is --out); lr-find's
    # --plot passes its own flag
    "run.py:claim_outputs": OUT_WRITERS,
    "run.py:claim_output_file": OUT_WRITERS,
    "api.py:lr_find": ("lr-find",),  # --plot: a file of the user's is refused
    "cli/__init__.py:evaluation_note": EVALUATORS,
    "cli/__init__.py:_main": (*TRAINERS, "lr-find", *TASK_TRAINERS),  # out of memory: training
    "cli/__init__.py:_runtime_error_message": (*TRAINERS, "lr-find", *TASK_TRAINERS),
    "cli/__init__.py:<module>": (*TRAINERS, "lr-find", *TASK_TRAINERS),  # CPU_OUT_OF_MEMORY
    # a streamed loader's worker died: only TrainConfig's commands stream (--loader)
    "cli/__init__.py:_worker_died": (*TRAINERS, "lr-find", "tune"),
    "cli/video.py:_run_predict_cli": ("video predict",),
    "segment.py:predict_segmentation": ("segment predict", "predict"),  # --precision
    "detect.py:predict_detection": ("detect predict", "predict"),  # --precision
    "export.py:export_model": ("export",),
    "data/decode.py:_check_options": DECODERS,  # only for a limit the user gave
    "data/masks.py:check_mask_values": ("segment train", "segment evaluate"),
    "data/masks.py:_coco": ("segment train", "segment evaluate"),
    "data/scan.py:check": ("data check", *TRAINERS, "lr-find", "video train"),
    # not cv: its folds' validation is checked first in its own words (data/folds.py:fold_split)
    "data/sources.py:stratified_split": (
        "train",
        "finetune",
        "transfer-study",
        "lr-find",
        "video train",
    ),  # fmt: skip
    "data/sources.py:multilabel_split": (  # reached through stratified_split
        "train",
        "finetune",
        "transfer-study",
        "lr-find",
        "video train",
    ),  # fmt: skip
    "tasks/classify/multilabel.py:check_options": TRAINERS,  # multi-label data in training
    "tasks/classify/multilabel.py:check_tta": ("predict", "serve"),  # a multi-label model
    "tasks/classify/multilabel.py:check_predict_options": ("predict",),
    "data/sources.py:_torchvision": (*TRAINERS, "lr-find"),
    "data/sources.py:load_source": (*TRAINERS, "lr-find", "evaluate", "embed"),
    "data/sources.py:apply_split_file": (*TRAINERS, "lr-find", "evaluate", "embed"),
    "data/folds.py": ("cv",),
    "tasks/classify/cv.py": ("cv",),
    "tune/space.py": ("tune",),
    "cli/examples.py:<module>": (),  # each example's own command: test_cli_help.py checks them
    "engine/calibration.py:check_min_confidence": ("predict",),
    "tune/study.py": ("tune",),
    # PIXEL_LIMIT_HINT, said by _from_items when training reads the data (RUN_PIXEL_HINT names
    # its command when evaluate or embed read it)
    "data/sources.py:<module>": (*TRAINERS, "lr-find"),
    "data/tensors.py:open_cache": TRAINERS,
    "detect.py:_prepare": ("detect train",),
    "engine/distributed.py:init_from_env": DISTRIBUTED,
    "engine/distributed.py:join": TASK_TRAINERS,  # "run `cnnlab segment train --devices N ...`"
    "engine/distributed.py:local_batch_size": DISTRIBUTED,
    "engine/distributed.py:wrap_ddp": DISTRIBUTED,
    "engine/distributed.py:launch": DISTRIBUTED,
    "engine/distributed.py:restart_run_dir": ("train", *TASK_TRAINERS),  # --max-restarts
    "engine/distributed.py:torchrun_command": (),  # torchrun's own options (FOREIGN)
    "engine/trainer.py:_forward_backward": (*TRAINERS, "segment train", "detect train"),
    "explain/conv.py:run_lab": ("conv",),
    "export.py:_decode_props": ("export",),
    "export.py:export_module": ("export",),
    "export.py:_check_options": ("export",),
    "export.py:compare_outputs": ("export",),
    "export.py:_export_onnx": ("export",),
    "models/segmentation.py:load_encoder_from_run": ("segment train",),
    "models/_timm.py": (*TRAINERS, "lr-find"),  # --weights imagenet of a timm: model
    # --init-from imagenet of a timm: segmentation encoder or detection backbone
    "models/_timm.py:create_timm_encoder": ("segment train", "detect train"),
    "report/conv_figure.py:write_conv_figure": ("conv",),
    "report/explain_page.py:explain_image": ("explain",),
    "report/explain_page.py:explain_dense_image": ("explain",),
    "api.py:explain": ("explain",),
    "segment.py:_prepare": ("segment train",),
    "segment.py:_image_size": ("segment train",),
    "data/masks.py:check_training_masks": ("segment train",),
    "serve/app.py": ("serve",),  # the whole module: the web explorer is `cnnlab serve`
    "video/predict.py:run_cli": ("video predict",),
    "video/train.py:_folder_clips": ("video train",),
    "video/train.py:_prepare": ("video train",),
}

#: (function, flag) pairs said only on a path that some of the function's commands never take
ONLY_ON: dict[tuple[str, str], tuple[str, ...]] = {
    # "resume needs the same classes (use --init-from ...)": only under --resume, which a
    # transfer study never passes (it sets each run itself)
    ("tasks/classify/train.py:_prepare", "--init-from"): ("train", "finetune"),
    # "resume with: cnnlab train --resume RUN": the message names `cnnlab train` (or the task's
    # trainer), which resumes a transfer study's run as well
    ("engine/fit.py:fit", "--resume"): ("train", "finetune", *TASK_TRAINERS),
}


def command_flags() -> dict[str, set[str]]:
    """'train' -> {'--data', ...}; nested actions as 'segment train', 'data check'."""
    flags: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        own = {s for a in parser._actions for s in a.option_strings}
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if name:
            flags[name] = own
        for sub in subs:
            for child, p in sub.choices.items():
                walk(p, f"{name} {child}".strip())
        for a in parser._actions:  # `data check` and `models list/show` are positional choices
            if name and a.dest == "action" and a.choices:
                for choice in a.choices:
                    flags[f"{name} {choice}"] = own

    walk(build_parser(), "")
    return flags


def suggested_flags() -> list[tuple[str, str, int, str]]:
    """(key, literal, line, command-in-literal) for every string literal that names a flag."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }

        def visit(
            node: ast.AST,
            function: str | None,
            command: str | None,
            rel: str = rel,
            docstrings: set[int] = docstrings,
        ) -> None:
            for child in ast.iter_child_nodes(node):
                fn, cmd = function, command
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn is None:
                    fn = child.name
                    for deco in child.decorator_list:
                        if (
                            isinstance(deco, ast.Call)
                            and getattr(deco.func, "id", "") == "command"
                            and deco.args
                        ):
                            cmd = deco.args[0].value
                if isinstance(child, ast.Call) and getattr(child.func, "attr", "") in (
                    "add_argument",
                    "add_parser",
                    "ArgumentParser",
                ):
                    continue  # a command's own help text
                if (
                    isinstance(child, ast.Constant)
                    and isinstance(child.value, str)
                    and id(child) not in docstrings
                    and FLAG.search(child.value)
                ):
                    key = f"{rel}:{fn or '<module>'}"
                    found.append((key, child.value, child.lineno, cmd or ""))
                visit(child, fn, cmd, rel, docstrings)

        visit(tree, None, None)
    return found


def test_the_scan_finds_the_messages_it_is_about():
    """The scan sees f-string parts and joined literals: known messages are among its finds."""
    found = {(key, text) for key, text, _, _ in suggested_flags()}
    keys = {key for key, _ in found}
    assert "data/scan.py:check" in keys and "tasks/classify/train.py:_prepare" in keys
    assert any("lower --batch-size" in text for key, text in found if key == "engine/fit.py:fit")


def test_every_suggested_flag_exists_on_the_commands_that_print_it():
    flags = command_flags()
    assert {"train", "serve", "data check", "segment train", "video predict"} <= set(flags)
    wrong, unmapped = [], set()
    for key, text, line, handler in suggested_flags():
        for flag in FLAG.findall(text):
            if flag in FOREIGN:
                continue
            before = text[: text.index(flag)]
            named = NAMED.findall(before)
            if named:  # "cnnlab train --devices 2": that command's flag
                commands: tuple[str, ...] = (named[-1].strip(),)
            elif handler:
                commands = (handler,)
            elif (key, flag) in ONLY_ON:
                commands = ONLY_ON[key, flag]
            elif key in PRINTED_BY or key.split(":")[0] in PRINTED_BY:
                commands = PRINTED_BY[key] if key in PRINTED_BY else PRINTED_BY[key.split(":")[0]]
            else:
                unmapped.add(key)
                continue
            for cmd in commands:
                if cmd not in flags:
                    wrong.append(f"{key} line {line}: command {cmd!r} does not exist")
                elif flag not in flags[cmd]:
                    wrong.append(f"{key} line {line}: `cnnlab {cmd}` has no {flag}: {text!r}")
    assert not unmapped, f"add these to PRINTED_BY (which commands print them?): {sorted(unmapped)}"
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "text, expected",
    [("run `cnnlab train --devices 2`", ["train"]), ("cnnlab data check --strict", ["data check"])],
)
def test_a_message_that_names_its_command_is_checked_against_it(text, expected):
    assert NAMED.findall(text) == expected
