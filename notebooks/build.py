"""Write the Colab notebooks of this folder: `python notebooks/build.py`.

The notebooks are generated so that the cells they share (parameters, helpers, Drive, install, login) stay
identical, and so that a change reads as Python in review instead of notebook JSON. Edit the cells here, in
opening.py (what to do first, Drive, install, login) and in stages.py (each notebook's own cells and its T4 sizes),
then rerun this script: it also prints each notebook's T4 time for README.md. tests/test_notebooks.py checks that
the committed notebooks are exactly what it writes, saved without outputs, and runs each of them with TINY = True.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import nbformat
from opening import BEFORE_YOU_RUN, DRIVE, DRIVE_MD, INSTALL, INSTALL_MD, LOGIN, LOGIN_MD

HERE = Path(__file__).resolve().parent

# The first code cell; the test suite replaces its source with `TINY = True`.
PARAMETERS = "TINY = False  # True: tiny-llama2 and a few steps on CPU (what the test suite runs)"


def repository() -> str:
    """The repository's address: pyproject.toml's [project.urls] Repository, the one place it is written."""
    import tomllib

    pyproject = tomllib.loads((HERE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["project"]["urls"]["Repository"].rstrip("/")


def colab_link(name: str) -> str:
    """The Open-in-Colab address of a notebook of this folder, on the repository's main branch."""
    github = repository().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{github}/blob/main/notebooks/{name}"


# --------------------------------------------------------------------------------------------- cells every notebook has

HELPERS = '''
import codecs
import html
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from IPython.display import HTML, display

IN_COLAB = "google.colab" in sys.modules


def sh(command: str) -> None:
    """Run a shell command with its output streamed here; a failure stops the notebook (unlike `!command`)."""
    print(f"$ {command}", flush=True)
    process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    for chunk in iter(lambda: process.stdout.read1(4096), b""):
        sys.stdout.write(decode(chunk))
        sys.stdout.flush()
    if process.wait() != 0:
        raise RuntimeError(f"exit status {process.returncode} from: {command} (its output above says why)")


def sets(settings: list[str]) -> str:
    """The --set KEY=VALUE options of a posttrain command."""
    return " ".join(f"--set {shlex.quote(setting)}" for setting in settings)


def train(command: str, run: str) -> None:
    """Run a training command into the run folder `run`. Run again (after a disconnect, or with Run all), it keeps
    a finished run, continues an interrupted one from its last checkpoint or from the data it built (--resume),
    and starts over one that stopped before either."""
    if Path(run, "metrics.json").is_file():  # written last: the run has finished
        print(f"{run} has finished: kept (delete the folder to train it again)")
        return
    started = Path(run, "recipe.yaml").is_file()
    checkpoints = [path for path in Path(run, "checkpoints").glob("*") if path.is_dir()]
    built = [Path(run, "gatt", "dialogues.jsonl"), Path(run, "distill", "selected.jsonl")]  # gatt's, distill's
    progress = checkpoints or any(path.is_file() for path in built)
    again = ("--resume" if progress else "--overwrite") if started else ""
    sh(f"{command} --output-dir {run} {again}".rstrip())


def metrics(run: str) -> dict:
    """A run folder's metrics.json (written last: it exists only when the run finished)."""
    return json.loads(Path(run, "metrics.json").read_text())


def plot_metrics(rows: list[dict], panels: list[list[str]], x: str = "step") -> None:
    """One plot per list of keys; each key is drawn against `x` over the rows that have it."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    for ax, keys in zip(axes[0], panels, strict=True):
        for key in keys:
            points = [(row[x], row[key]) for row in rows if key in row]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
        ax.set_xlabel(x)
        ax.legend()
    fig.tight_layout()
    plt.show()


def replies(path: str) -> dict[str, str]:
    """A `posttrain generate` output file as {question: reply}."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return {row["prompt"][-1]["content"]: row["response"] for row in rows}


def side_by_side(questions: list[str], columns: dict[str, list[str]]) -> None:
    """A table with one row per question and one column per model."""

    def cell(text: str) -> str:
        return f'<td style="text-align:left; vertical-align:top; white-space:pre-wrap">{html.escape(text)}</td>'

    head = "".join(f'<th style="text-align:left">{html.escape(name)}</th>' for name in ["question", *columns])
    body = "".join(
        "<tr>" + cell(question) + "".join(cell(column[i]) for column in columns.values()) + "</tr>"
        for i, question in enumerate(questions)
    )
    display(HTML(f"<table><tr>{head}</tr>{body}</table>"))


def compare_replies(files: dict[str, str]) -> None:
    """`posttrain generate` outputs side by side, one row per question of QUESTIONS: {column title: replies file}."""
    answers = {title: replies(path) for title, path in files.items()}
    side_by_side(QUESTIONS, {title: [answer[q] for q in QUESTIONS] for title, answer in answers.items()})


def show_folder(folder: str) -> None:
    """The files and folders directly inside `folder`."""
    for path in sorted(Path(folder).iterdir()):
        print(f"  {path.name}/" if path.is_dir() else f"  {path.name}")


# The questions asked before and after training (any data format works as a prompt file).
QUESTIONS = [
    "What is the capital of Japan?",
    "Give me three tips for a job interview.",
    "Explain in two sentences why the sky is blue.",
]
Path("questions.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\\n" for q in QUESTIONS))
GENERATE = f"--prompts questions.jsonl --max-new-tokens {24 if TINY else 256}"  # for generate and eval winrate
'''

# ------------------------------------------------------------------------------------------------------------ writing


def markdown(text: str):
    return nbformat.v4.new_markdown_cell(dedent(text).strip())


def code(text: str, **metadata):
    return nbformat.v4.new_code_cell(dedent(text).strip(), metadata=metadata)


def commands_of(methods: tuple[str, ...]) -> str:
    """What each training command of a notebook does and starts from, as posttrain's method table says."""
    from posttrain.methods import METHODS

    lines = []
    for name in methods:
        method = METHODS[name]
        runs = " and ".join(method.starts_from) + (" runs" if len(method.starts_from) > 1 else " run")
        after = f" It starts from the {runs}." if method.starts_from else ""
        lines.append(f"- `posttrain {name}`: {method.help}{after}")
    return "\n".join(["The commands this notebook runs:", "", *lines]) if lines else ""


def notebook(
    name: str,
    title: str,
    cells: list[tuple[str, str]],
    timed: list[tuple],
    extra: str = "",
    methods: tuple[str, ...] = (),
    needs: str = "",
) -> nbformat.NotebookNode:
    """The shared opening (title, Open-in-Colab link, the commands it runs, its T4 time, what to do first,
    parameters, helpers, Drive, install, login), then the stage's own cells."""
    from t4_time import time_paragraph  # beside this file, like stages.py

    title = dedent(title).strip()
    heading, _, text = title.partition("\n")
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_link(name)})"
    first = f"**Run first**: {needs}. This notebook finds their run folders on your Google Drive." if needs else ""
    parts = (heading, badge, text.strip(), commands_of(methods), time_paragraph(timed), first, BEFORE_YOU_RUN)
    book_cells = [
        markdown("\n\n".join(part for part in parts if part)),
        code(PARAMETERS, tags=["parameters"]),
        markdown(
            "## Helpers\n\n`sh` runs a command and stops the notebook if it fails; `train` runs a training command, "
            "or continues or keeps its run; the others read and show results."
        ),
        code(HELPERS),
        markdown(DRIVE_MD),
        code(DRIVE),
        markdown(INSTALL_MD),
        code(INSTALL.format(extra=extra, repository=repository())),
        markdown(LOGIN_MD),
        code(LOGIN),
        *(markdown(text) if kind == "md" else code(text) for kind, text in cells),
    ]
    for number, cell in enumerate(book_cells, start=1):
        cell["id"] = f"cell-{number:02d}"  # fixed ids: rebuilding an unchanged notebook changes no byte
    book = nbformat.v4.new_notebook(cells=book_cells)
    book.metadata = {
        "accelerator": "GPU",
        "colab": {"gpuType": "T4", "provenance": []},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return book


def build_all() -> dict[str, str]:
    """{file name: notebook JSON} of every notebook."""
    from stages import NOTEBOOKS  # beside this file, which is on sys.path when run as a script

    return {name: nbformat.writes(notebook(name, **parts)) + "\n" for name, parts in NOTEBOOKS.items()}


def main() -> None:
    from t4_time import notebook_times

    for name, text in build_all().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote notebooks/{name}")
    print("estimated T4 time (README.md's table):")
    for name, time in notebook_times().items():
        print(f"  {name:<24} about {time}")


if __name__ == "__main__":
    main()
