"""Help that teaches: every option of every command says what it does (issue 23).

The generated options' help is the config field's own comment (cnnlab.cli.options): a new field
without a comment fails here, as does a hand-written option without `help=` or a command without
examples. Also: shell completion (argcomplete), --version, and a reader that stops early
(`cnnlab ... | head`) ending the command without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_process import SRC, TIMEOUT

import cnnlab
from cnnlab.cli import build_parser, main
from cnnlab.cli.examples import EXAMPLES
from cnnlab.cli.options import config_help, field_docs
from cnnlab.config import TrainConfig
from cnnlab.tasks.configs import DetectConfig, SegmentConfig, VideoConfig

CONFIGS = (TrainConfig, SegmentConfig, DetectConfig, VideoConfig)


def parsers(
    parser: argparse.ArgumentParser, words: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """("train", parser), ("segment train", parser), ... for every (sub)command, the root first."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{words} {name}".strip())


def test_every_option_of_every_command_has_a_description():
    missing = []
    for words, parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.help == argparse.SUPPRESS:  # a hidden old spelling
                continue
            text = (action.help or "").split("(default:")[0].strip()
            if not text:
                missing.append(f"cnnlab {words} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "options without a description:\n" + "\n".join(missing)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_has_a_comment_that_becomes_its_help(cls: type):
    helps = {h.name: h for h in config_help(cls)}
    assert set(helps) == {f.name for f in dataclasses.fields(cls)}
    undocumented = [name for name, h in helps.items() if not h.doc]
    assert not undocumented, (
        f"{cls.__name__} fields without a `# comment` (their --help): {undocumented}"
    )


def test_help_shows_the_comment_the_allowed_values_and_the_default():
    train = {h.name: h for h in config_help(TrainConfig)}
    assert train["optimizer"].choices == ("sgd", "adamw")
    assert train["lr"].choices == ("auto",)  # float | Literal["auto"]
    assert train["schedule"].help().endswith("[onecycle|cosine|constant] (default: onecycle)")
    assert "%%" in train["warmup_epochs"].help()  # "25%" escaped for argparse
    assert train["nesterov"].is_bool and not train["epochs"].is_bool
    assert train["channels_last"].is_bool  # bool | None
    segment = {h.name: h for h in config_help(SegmentConfig)}
    assert "ce+dice" in segment["loss"].choices
    # a field re-declared without a comment keeps its parent's (RunConfig's batch_size)
    assert segment["batch_size"].doc == train["batch_size"].doc
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--optimizer {sgd,adamw}" in text and "sgd (with momentum) or adamw" in text
    assert "examples:" in text


@pytest.mark.parametrize(
    "words", ["evaluate", "segment evaluate", "detect evaluate", "video evaluate"]
)
def test_an_evaluate_says_its_skip_policy_defaults_to_the_runs_own(words: str):
    """On the run's own split an evaluate applies the run's recorded --max-bad-fraction and
    --strict (cnnlab.data.scan.given_policy); the help said "(default: 0.1)", the config's, which
    holds only with --data."""
    helps = {a.dest: a.help for a in dict(parsers(build_parser()))[words]._actions}
    for dest, default in (("max_bad_fraction", "0.1"), ("strict", "false")):
        assert helps[dest].endswith(f"(default: the run's own on its split; {default} with --data)")
    train = {a.dest: a.help for a in dict(parsers(build_parser()))["train"]._actions}
    assert train["max_bad_fraction"].endswith("(default: 0.1)")  # training's own default


def test_detect_predicts_out_help_names_the_files_it_writes():
    """`detect predict --out` said "folder for results.json", a file it never wrote: it writes
    predictions.json (cnnlab.detect.predict_detection, docs/detection.md) and images/."""
    out = {a.dest: a.help for a in dict(parsers(build_parser()))["detect predict"]._actions}["out"]
    assert "predictions.json" in out and "images/" in out and "results.json" not in out


def test_the_augment_help_names_every_augmentation_the_task_allows():
    from cnnlab.config import AUGMENTATIONS
    from cnnlab.data.boxes import BOX_AUGMENTATIONS
    from cnnlab.data.masks import SEGMENTATION_AUGMENTATIONS
    from cnnlab.tasks.configs import VIDEO_AUGMENTATIONS

    allowed = {TrainConfig: AUGMENTATIONS, SegmentConfig: SEGMENTATION_AUGMENTATIONS,
               DetectConfig: BOX_AUGMENTATIONS, VideoConfig: VIDEO_AUGMENTATIONS}  # fmt: skip
    for cls, names in allowed.items():
        doc = field_docs(cls)["augment"]
        assert all(name in doc for name in names), (cls.__name__, doc)


def test_field_docs_reads_trailing_wrapped_and_preceding_comments(tmp_path: Path, monkeypatch):
    (tmp_path / "toy_config.py").write_text(
        textwrap.dedent(
            '''
            from __future__ import annotations
            from dataclasses import dataclass

            @dataclass(frozen=True)
            class Base:
                """A docstring: not a field's comment."""

                # --- data ---
                size: int = 3  # pixels (square)
                # two lines above
                # of one field
                name: str = "a # not a comment"
                wrapped: str | None = (
                    None  # inside the parentheses
                )  # fmt: skip
                bare: int = 0

            @dataclass(frozen=True)
            class Child(Base):
                size: int = 5
                extra: float = 1.0  # the child's own

                def method(self) -> None:
                    x: int = 1  # a local, not a field
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    toy = importlib.import_module("toy_config")
    assert field_docs(toy.Child) == {
        "size": "pixels (square)",
        "name": "two lines above of one field",
        "wrapped": "inside the parentheses",
        "extra": "the child's own",
    }


def test_every_command_has_examples_in_its_help():
    for words, parser in parsers(build_parser()):
        if words in ("segment", "detect", "video") or words in EXAMPLES:
            assert words not in EXAMPLES or parser.epilog.startswith("examples:\n  cnnlab")
        else:
            pytest.fail(f"`cnnlab {words}` has no examples (cnnlab/cli/examples.py)")
    assert set(EXAMPLES) <= {words for words, _ in parsers(build_parser())}


def test_every_example_uses_options_its_command_has():
    """The examples are command lines a user copies: each --flag must exist on the command the
    example runs (which may differ from the command whose help shows it)."""
    commands = dict(parsers(build_parser()))
    wrong = []
    for words, examples in EXAMPLES.items():
        for line, _ in examples:
            # after `cnnlab`, before a redirection
            path, tokens = command_path(shlex.split(line.split(">")[0])[1:], commands)
            flags = {s for a in commands[path]._actions for s in a.option_strings}
            wrong += [f"{words!r}: {line!r} uses {t}" for t in tokens
                      if t.startswith("--") and t.split("=")[0] not in flags]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def command_path(
    tokens: list[str], commands: dict[str, argparse.ArgumentParser]
) -> tuple[str, list[str]]:
    """("segment train", the tokens after it) for the tokens after `cnnlab`."""
    path: list[str] = []
    while tokens and " ".join([*path, tokens[0]]) in commands:
        path.append(tokens.pop(0))
    return " ".join(path), tokens


def documented_command_lines(root: Path) -> Iterator[tuple[str, str]]:
    """(file, command line) for every `cnnlab ...` line of a fenced code block and every inline
    `cnnlab ...` span of the README and the docs site: what users copy. Continued lines
    (backslash) are joined; comments and what follows a pipe or a redirection are dropped; a
    line of a command's output shown after `$ cnnlab ...` is not a command."""
    pages = [
        root / "README.md",
        root / "notebooks" / "README.md",
        *sorted((root / "docs").rglob("*.md")),
    ]
    fence = r"(?ms)^\s*```[^\n]*\n(.*?)^\s*```"
    commands = {words.split()[0] for words, _ in parsers(build_parser()) if words}
    for page in pages:
        name, text = page.relative_to(root).as_posix(), page.read_text()
        for block in re.findall(fence, text):
            prompted = "$ " in block  # a console session: commands are the prompted lines
            for line in block.replace("\\\n", " ").splitlines():
                prompt = r"\$ " if prompted else r"(?:\$ )?"
                found = re.match(rf"\s*{prompt}(?:\S*/)?(?:python -m )?(cnnlab(?: .*)?)$", line)
                if found:
                    yield name, re.split(r" #|[|>]", found[1])[0]
        # in prose, `cnnlab evaluate/predict RUN` names two commands; a span whose next word is
        # no command at all quotes output (a log line), not a command line
        for span in re.findall(r"`(cnnlab [^`]+)`", re.sub(fence, "", text)):
            head, *rest = re.split(r" #| \| |>", span)[0].split(" ", 2)[1:] or [""]
            if head.startswith("-") or set(head.split("/")) <= commands:
                yield from ((name, " ".join(["cnnlab", word, *rest])) for word in head.split("/"))


def test_every_documented_command_line_uses_commands_and_options_that_exist():
    """The README's and the docs site's command lines are copied by users: each names a command
    that exists and only options that command has (a renamed option or command fails here)."""
    commands = dict(parsers(build_parser()))
    lines = list(documented_command_lines(Path(__file__).resolve().parents[1]))
    assert len(lines) > 50  # the search finds the documents' command lines
    wrong = []
    for page, line in lines:
        words, rest = command_path(shlex.split(line)[1:], commands)
        if not words and rest and not rest[0].startswith("-"):
            wrong.append(f"{page}: {line!r}: no command {rest[0]!r}")
            continue
        flags = {s for a in commands[words]._actions for s in a.option_strings}
        wrong += [f"{page}: {line!r} uses {t}, which `cnnlab {words}` does not have"
                  for t in (t.strip("[]") for t in rest)
                  if t.startswith("--") and t.split("=")[0] not in flags]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"cnnlab {cnnlab.__version__} (torch ")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_shell_script(shell: str, capsys: pytest.CaptureFixture[str]):
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "cnnlab" in script and "_ARGCOMPLETE" in script


def _env(**extra: str) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")} | extra


def test_completion_completes_commands_and_allowed_values(tmp_path: Path):
    """What the shell script asks: argcomplete answers through a file (no torch for these)."""
    found = {}
    for line in ("cnnlab tr", "cnnlab train --optimizer "):
        answer = tmp_path / "answer"
        env = _env(
            _ARGCOMPLETE="1", COMP_LINE=line, COMP_POINT=str(len(line)),
            _ARGCOMPLETE_STDOUT_FILENAME=str(answer),
        )  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "cnnlab"], env=env, capture_output=True, text=True,
            timeout=TIMEOUT,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        found[line] = set(answer.read_text().split("\x0b"))
    assert found["cnnlab tr"] == {"train", "transfer-study"}
    assert found["cnnlab train --optimizer "] == {"sgd", "adamw"}


@pytest.mark.parametrize("printer", ["--json", "--table"])
def test_a_reader_that_stops_early_ends_the_command_quietly(printer: str):
    """`cnnlab conv --example slide --json | head -1`: the reader is gone before the output is
    written (its end of the pipe closed first), so the write fails every time. Also for what is
    printed through rich (`cnnlab models | head`, the conv table), which once exited with 1:
    rich's Console answers a broken pipe with SystemExit(1) unless told otherwise."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    args = ["conv", "--example", "slide"] + (["--json"] if printer == "--json" else [])
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cnnlab", *args],
            stdout=write_end, stderr=subprocess.PIPE, text=True, env=_env(), timeout=TIMEOUT,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr[-2000:]  # 128 + SIGPIPE, as `ls | head`
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_the_docs_site_references_are_generated_from_the_parser_and_the_configs():
    """docs/hooks/cnnlab_site.py (what `make docs` runs): every command and option is on the
    command-line page, every field on the configuration page; the site itself is built and opened
    in Chromium by `make test-docs`."""
    pytest.importorskip("mkdocs")
    path = Path(__file__).resolve().parents[1] / "docs" / "hooks" / "cnnlab_site.py"
    spec = importlib.util.spec_from_file_location("cnnlab_site", path)
    site = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(site)
    cli_page, config_page = site.cli_reference(), site.config_reference()
    for words, parser in parsers(build_parser()):
        assert f"{{#{site._anchor(words)}}}" in cli_page
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:  # hidden in --help, so on the page too
                continue
            for flag in action.option_strings:
                assert f"`{flag}" in cli_page or f", {flag}" in cli_page, (words, flag)
    for cls in CONFIGS:
        assert all(f"| `{h.name}` |" in config_page for h in config_help(cls))
    assert site.md("val_<metric> | a*b") == "val\\_&lt;metric&gt; \\| a\\*b"
