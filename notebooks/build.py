"""Write the Colab notebooks of this folder: `python notebooks/build.py`.

The notebooks are generated so that the cells they share (parameters, helpers, install, login) stay identical, and
so that a change reads as Python in review instead of notebook JSON. Edit the cells here (the stages live in
stages.py), then rerun this script; tests/test_notebooks.py checks that the committed notebooks are exactly what it
writes, saved without outputs, and runs each of them with TINY = True.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import nbformat

HERE = Path(__file__).resolve().parent

# The first code cell; the test suite replaces its source with `TINY = True`.
PARAMETERS = "TINY = False  # True: tiny-llama2 and a few steps on CPU (what the test suite runs)"

COLAB_RUNTIME = """\
In Colab: **Runtime → Change runtime type → T4 GPU**, then run the cells from the top. Every training command is
the shipped `llama2-7b/*-qlora-t4` recipe, sized for a 16 GB T4 by `posttrain plan`'s estimate (not yet measured on
a T4). Setting `TINY = True` in the next cell runs the same notebook with `tiny-llama2`, a random 2-layer Llama, for
a few steps on a CPU: that is how the test suite checks it. Its replies are noise."""


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

INSTALL_MD = """\
## Install

Colab already has a CUDA build of PyTorch; pip keeps it and installs posttrain with the Hugging Face stack
(transformers, TRL, PEFT, bitsandbytes, datasets, accelerate). posttrain is not on PyPI yet: the cell installs it
from its git repository, so **replace `OWNER` in `POSTTRAIN_GIT` with the repository's owner** (or point it at your
fork). `posttrain env` then shows the GPU and the precision posttrain will use: fp16 on a T4, which has no bf16."""

INSTALL = """
POSTTRAIN_GIT = "git+https://github.com/OWNER/posttrain"  # <- the repository to install from: replace OWNER
if not TINY:
    sh(f"{{sys.executable}} -m pip install --quiet 'posttrain{extra} @ {{POSTTRAIN_GIT}}'")
sh("posttrain env")
"""

LOGIN_MD = """\
## Model and Hugging Face login

`meta-llama/Llama-2-7b-hf` is gated: accept Meta's licence on its page on huggingface.co, then log in here with a
token that can read it. To skip both, switch `MODEL` to the ungated copy `NousResearch/Llama-2-7b-hf` (the same
weights, also a Llama 2 7B base); any other Llama-architecture model works too. `RUNS` is where the run folders
go: on Colab's disk, which is lost when the session ends (see the end of the notebook for Google Drive)."""

LOGIN = """
MODEL = "meta-llama/Llama-2-7b-hf"  # ungated alternative: "NousResearch/Llama-2-7b-hf"
RUNS = "runs/llama2-7b"  # run folders: runs/llama2-7b-sft, runs/llama2-7b-reward, ...
if TINY:
    MODEL, RUNS = "tiny-llama2", "runs/tiny"
elif MODEL.startswith("meta-llama/"):
    from huggingface_hub import get_token, notebook_login

    if get_token() is None:
        notebook_login()
    if token := get_token():  # the posttrain commands run in their own processes: hand them the token
        os.environ["HF_TOKEN"] = token
"""

DRIVE_MD = """\
### Keep the runs: Google Drive

Colab's disk is wiped when the session ends. The next cell (off by default) copies `runs/` to your Google Drive;
copy it back to `/content/runs` in a new session before a notebook that starts from these runs. To survive a
disconnect during training, you can instead point `RUNS` at a Drive folder (after mounting Drive) and continue an
interrupted run by adding `--resume` to its command."""

DRIVE = """
COPY_TO_DRIVE = False  # True: copy runs/ to MyDrive/posttrain/runs (Colab only)
if COPY_TO_DRIVE and not TINY:
    import shutil

    from google.colab import drive

    drive.mount("/content/drive")
    shutil.copytree("runs", "/content/drive/MyDrive/posttrain/runs", dirs_exist_ok=True)
"""

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
    title: str, cells: list[tuple[str, str]], extra: str = "", methods: tuple[str, ...] = ()
) -> nbformat.NotebookNode:
    """The shared opening (title, the commands it runs, parameters, helpers, install, login), the stage's own
    cells, then Drive."""
    opening = "\n\n".join(part for part in (dedent(title).strip(), commands_of(methods), COLAB_RUNTIME) if part)
    book_cells = [
        markdown(opening),
        code(PARAMETERS, tags=["parameters"]),
        markdown(
            "## Helpers\n\n`sh` runs a command and stops the notebook if it fails; the others read and show results."
        ),
        code(HELPERS),
        markdown(INSTALL_MD),
        code(INSTALL.format(extra=extra)),
        markdown(LOGIN_MD),
        code(LOGIN),
        *(markdown(text) if kind == "md" else code(text) for kind, text in cells),
        markdown(DRIVE_MD),
        code(DRIVE),
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

    return {name: nbformat.writes(notebook(**parts)) + "\n" for name, parts in NOTEBOOKS.items()}


def main() -> None:
    for name, text in build_all().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote notebooks/{name}")


if __name__ == "__main__":
    main()
