"""MkDocs hooks (mkdocs.yml `hooks:`): the pages made from the code when the site is built.

* `reference/cli.md`: every command, option and example, read from `cnnlab.cli.build_parser()`
  (the same text as `--help`: each generated option's help is its config field's comment);
* `reference/configuration.md`: every field of the task configs, from `cnnlab.cli.options`;
* `notebooks/`: notebooks/*.ipynb (rendered by mkdocs-jupyter from their stored outputs, never
  executed here) with notebooks/README.md as the section's index;
* `benchmarks/results/`: benchmarks/results/*.md, listed at the end of docs/benchmarks.md;
* `assets/mathjax/`: the MathJax 2 copy of the `jupyter-server-mathjax` package, which the notebook
  pages load (mkdocs.yml `custom_mathjax_url`), so their math renders offline.

Nothing is copied into docs/ by hand, so none of it can drift. The cnnlab imported is this
checkout's (src/ first on sys.path); building the parser imports no torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import mkdocs.plugins
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from cnnlab.cli import build_parser  # noqa: E402
from cnnlab.cli.options import config_help  # noqa: E402
from cnnlab.config import TrainConfig  # noqa: E402
from cnnlab.tasks.configs import DetectConfig, SegmentConfig, VideoConfig  # noqa: E402

CONFIGS = {
    TrainConfig: "cnnlab train, finetune, lr-find, transfer-study",
    SegmentConfig: "cnnlab segment train",
    DetectConfig: "cnnlab detect train",
    VideoConfig: "cnnlab video train",
}


# -- files ---------------------------------------------------------------------------------------------------
# priority 50: before mkdocs-jupyter (priority 0) wraps the .ipynb files as pages
@mkdocs.plugins.event_priority(50)
def on_files(files: Files, config) -> Files:
    def from_checkout(path: Path) -> File:  # at the same path in the site as in the checkout
        src_uri = path.relative_to(ROOT).as_posix()
        return File(src_uri, str(ROOT), config.site_dir, config.use_directory_urls)

    # plain Files: mkdocs-jupyter's wrapper cannot read a generated File's source path
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(from_checkout(path))
    readme = ROOT / "notebooks" / "README.md"
    files.append(File.generated(config, "notebooks/index.md", abs_src_path=str(readme)))
    for path in _benchmark_results():
        files.append(from_checkout(path))
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    files.append(File.generated(config, "reference/configuration.md", content=config_reference()))
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    if page.file.src_uri == "benchmarks.md":  # the list of stored results, as found
        items = [
            f"- [{_title(path)}](benchmarks/results/{path.name})" for path in _benchmark_results()
        ]
        markdown += "\n\n## Stored results\n\n" + "\n".join(items) + "\n"
    if page.file.src_uri.startswith("benchmarks/results/"):  # shown as they are, with their name
        markdown = f"<small>`benchmarks/results/{page.file.name}.md`</small>\n\n" + markdown
    return markdown


def on_page_content(html: str, page, config, files: Files) -> str:
    """Docstrings cross-reference in Sphinx's words (:func:`x`); on this site the name is enough."""
    return _ROLE.sub(r"\1", html)


_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):(<code>)")


def _benchmark_results() -> list[Path]:
    return sorted((ROOT / "benchmarks" / "results").glob("*.md"))


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem


# -- Markdown helpers ----------------------------------------------------------------------------------------
def md(text: str) -> str:
    """``text`` safe in Markdown and in a table cell: outside `code spans`, characters that would
    start HTML or emphasis are escaped; pipes are escaped everywhere."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(part.replace("|", "\\|"))
        else:
            part = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            out.append(re.sub(r"([\\*_\[\]|])", r"\\\1", part))
    return "".join(out)


def code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def _anchor(words: str) -> str:
    return "cnnlab-" + words.replace(" ", "-") if words else "cnnlab"


# -- the command-line reference ------------------------------------------------------------------------------
def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            found += [(name, sub, helps.get(name, "")) for name, sub in action.choices.items()]
    return found


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The text `--help` prints for ``action`` (defaults filled in)."""
    return parser._get_formatter()._expand_help(action) if action.help else ""


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None and action.metavar is None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    name = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    return f"{name} ..." if action.nargs in ("+", "*", argparse.REMAINDER) else str(name)


def _command_section(parser: argparse.ArgumentParser, words: str, level: int) -> list[str]:
    title = f"cnnlab {words}".strip()
    lines = [f"{'#' * level} {title} {{#{_anchor(words)}}}", ""]
    if parser.description:
        lines += [md(parser.description), ""]
    lines += ["```text", parser.format_usage().removeprefix("usage: ").rstrip(), "```", ""]
    rows = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        names = ", ".join(action.option_strings) or action.dest
        value = _value(action)
        rows.append(
            f"| {code(names)} | {code(value) if value else ''} | {md(_help(parser, action))} |"
        )
    if rows:
        lines += ["| option | value | description |", "|---|---|---|", *rows, ""]
    subs = _subcommands(parser)
    if subs:
        lines += ["| command | what it does |", "|---|---|"]
        for name, _, help_text in subs:
            sub_words = f"{words} {name}".strip()
            lines.append(
                f"| [{code('cnnlab ' + sub_words)}](#{_anchor(sub_words)}) | {md(help_text)} |"
            )
        lines.append("")
    if parser.epilog:  # "examples:" then "  cnnlab ...  # what it does" lines
        examples = [line.strip() for line in parser.epilog.splitlines()[1:]]
        lines += ["Examples:", "", "```console", *(f"$ {e}" for e in examples), "```", ""]
    for name, sub, _ in subs:
        lines += _command_section(sub, f"{words} {name}".strip(), min(level + 1, 4))
    return lines


def cli_reference() -> str:
    os.environ["COLUMNS"] = "80"  # argparse wraps the usage lines to the page's code width
    parser = build_parser()
    head = [
        "# Command line",
        "",
        "Every command, option and example of `cnnlab`, generated from the argument parser "
        "(`cnnlab.cli.build_parser`) each time this site is built: the same text as "
        "`cnnlab COMMAND --help`. The options of the training commands are the fields of their "
        "configs, described by the comment beside each field in the source "
        "([configuration](configuration.md)). Shell completion: `cnnlab completion bash|zsh|fish` "
        "([getting started](../getting-started.md#shell-completion)).",
        "",
    ]
    return "\n".join(head + _command_section(parser, "", 2))


# -- the configuration reference -----------------------------------------------------------------------------
def config_reference() -> str:
    lines = [
        "# Configuration",
        "",
        "The fields of each task's config, generated from the code when this site is built. "
        "Each field is one command-line option (`--batch-size` for `batch_size`), one key of a "
        "`--config` JSON / TOML file and one keyword argument of the Python API; the "
        "description is the comment beside the field in the source, the same text as `--help`. "
        "Merge order: defaults < `--config` file < command line / keyword arguments; unknown "
        "keys fail with a close-match suggestion.",
        "",
        "A new field needs only its `# comment` (on its line, or on the lines right above it): "
        "`tests/test_cli_help.py` fails on a field without one.",
        "",
    ]
    for cls, commands in CONFIGS.items():
        doc = " ".join((cls.__doc__ or "").split("\n\n")[0].split())
        lines += [f"## {cls.__name__}", "", f"{md(doc)} Used by `{commands}`.", ""]
        lines += ["| field | type | default | allowed | description |", "|---|---|---|---|---|"]
        for h in config_help(cls):
            allowed = ", ".join(h.choices)
            lines.append(
                f"| {code(h.name)} | {h.type_name} | {code(h.default)} | {md(allowed)} | {md(h.doc)} |"
            )
        lines.append("")
    return "\n".join(lines)


# -- MathJax -------------------------------------------------------------------------------------------------
def on_post_build(config) -> None:
    """Copy MathJax 2 into the site. The package's __init__ imports jupyter_server: only its files
    are wanted, so it is located, never imported."""
    spec = importlib.util.find_spec("jupyter_server_mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("jupyter-server-mathjax is missing: pip install -e '.[docs]'")
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    target = Path(config.site_dir) / "assets" / "mathjax"
    shutil.copytree(static, target, dirs_exist_ok=True)
    # The package ships the STIX-Web fonts only (as Jupyter's own MathJax config expects): without
    # this, MathJax asks for its TeX fonts and gets 404s. Loaded by `,local/cnnlab` in the URL.
    (target / "config" / "local").mkdir(exist_ok=True)
    (target / "config" / "local" / "cnnlab.js").write_text(
        'MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, '
        'webFont: "STIX-Web", imageFont: null}});\n'
        'MathJax.Ajax.loadComplete("[MathJax]/config/local/cnnlab.js");\n'
    )
