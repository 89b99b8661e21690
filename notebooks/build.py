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


def repository() -> str:
    """The repository's address: pyproject.toml's [project.urls] Repository, the one place it is written."""
    import tomllib

    pyproject = tomllib.loads((HERE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["project"]["urls"]["Repository"].rstrip("/")


def colab_link(name: str) -> str:
    """The Open-in-Colab address of a notebook of this folder, on the repository's main branch."""
    github = repository().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{github}/blob/main/notebooks/{name}"


BEFORE_YOU_RUN = """\
## Before you run it

1. **GPU**: *Runtime → Change runtime type → T4 GPU*.
2. **posttrain**: on your computer, in a clone of the repository, `make wheel` writes
   `dist/posttrain-VERSION-py3-none-any.whl`. Put that file in a folder `posttrain` of your Google Drive (or drag it
   into Colab's file panel, `/content`): the install cell finds it. Or set `POSTTRAIN_GIT` in the install cell to a
   git URL to install from. Once posttrain is on PyPI, skip this step: the cell installs it from there.
3. **Hugging Face token**: `meta-llama/Llama-2-7b-hf` is gated. Accept Meta's licence on its page on
   huggingface.co, then add a Colab secret named `HF_TOKEN` (the key icon in the left bar) holding a token that can
   read it, with access for this notebook. Without the secret, the login cell waits until you paste a token. To
   skip both, set `MODEL` to the ungated copy `NousResearch/Llama-2-7b-hf` in the login cell.
4. ***Runtime → Run all.*** The Drive cell asks for access to your Google Drive: the run folders are written there
   (`MyDrive/posttrain/runs`), so a disconnect loses nothing. After one, reconnect and *Run all* again: a finished
   run is kept and an interrupted one continues from its last checkpoint (`--resume`).

Every training command is a shipped `llama2-7b/*-qlora-t4` recipe, sized down by `--set` to fit one free session
(drop those `--set`s for the full run: `posttrain plan` prints its time too). Setting `TINY = True` in the next cell
runs the same notebook with `tiny-llama2`, a random 2-layer Llama, for a few steps on a CPU: that is how the test
suite checks it. Its replies are noise."""


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
    a finished run, continues an interrupted one from its last checkpoint (--resume), and starts over one that
    stopped before its first checkpoint."""
    if Path(run, "metrics.json").is_file():  # written last: the run has finished
        print(f"{run} has finished: kept (delete the folder to train it again)")
        return
    started = Path(run, "recipe.yaml").is_file()
    checkpoints = [path for path in Path(run, "checkpoints").glob("*") if path.is_dir()]
    again = ("--resume" if checkpoints else "--overwrite") if started else ""
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

DRIVE_MD = """\
## Google Drive first

Colab's own disk is wiped when the session ends or disconnects. With `KEEP_ON_DRIVE` (the default), the run folders
go to `MyDrive/posttrain/runs` on your Google Drive: the next notebooks find them there, and after a disconnect
*Run all* continues an interrupted run from its last checkpoint. The cell asks once for access to your Drive. A 7B
run folder takes a few hundred MB: the adapter, and at most two checkpoints of adapter and optimizer."""

DRIVE = """
KEEP_ON_DRIVE = True  # False: run folders on Colab's disk, lost when the session ends
RUNS_DIR = Path("runs")
if KEEP_ON_DRIVE and IN_COLAB and not TINY:
    from google.colab import drive

    drive.mount("/content/drive")
    RUNS_DIR = Path("/content/drive/MyDrive/posttrain/runs")
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
print(f"run folders go to {RUNS_DIR.resolve()}")
"""

INSTALL_MD = """\
## Install

Colab already has a CUDA build of PyTorch; pip keeps it and installs posttrain with the Hugging Face stack
(transformers, TRL, PEFT, bitsandbytes, datasets, accelerate). The cell installs the newest `posttrain-*.whl` it
finds in `/content`, `MyDrive` or `MyDrive/posttrain` (see *Before you run it*), else `POSTTRAIN_GIT` when you set
it, else posttrain from PyPI. `posttrain env` then shows the GPU and the precision posttrain will use: fp16 on a
T4, which has no bf16."""

INSTALL = """
POSTTRAIN_GIT = ""  # or a git URL to install from, e.g. "git+{repository}"
DRIVE_FOLDER = Path("/content/drive/MyDrive")
WHEEL_FOLDERS = [Path.cwd(), Path("/content"), DRIVE_FOLDER, DRIVE_FOLDER / "posttrain"]  # where a wheel is looked for
if not TINY:
    wheels = [wheel for folder in WHEEL_FOLDERS for wheel in folder.glob("posttrain-*.whl")]
    if wheels:
        source = shlex.quote(f"{{max(wheels, key=os.path.getmtime)}}{extra}")  # the newest one
    elif POSTTRAIN_GIT:
        source = shlex.quote(f"posttrain{extra} @ {{POSTTRAIN_GIT}}")
    else:
        print("no posttrain-*.whl found and POSTTRAIN_GIT not set: installing posttrain from PyPI")
        source = shlex.quote("posttrain{extra}")
    sh(f"{{sys.executable}} -m pip install --quiet {{source}}")
sh("posttrain env")
"""

LOGIN_MD = """\
## Model and Hugging Face login

`meta-llama/Llama-2-7b-hf` is gated. The cell takes the token from the Colab secret `HF_TOKEN`, else from an
earlier login, else it asks for one and waits until you paste it: *Run all* stops there. It then checks that the
token can read the model, so that a licence not yet accepted stops the notebook here rather than in a run. To skip
the login, set `MODEL` to the ungated copy `NousResearch/Llama-2-7b-hf` (the same weights); any other
Llama-architecture model works too. `RUNS` is where the run folders go (on Drive, see above)."""

LOGIN = """
MODEL = "meta-llama/Llama-2-7b-hf"  # ungated alternative: "NousResearch/Llama-2-7b-hf"
RUNS = f"{RUNS_DIR}/llama2-7b"  # run folders: llama2-7b-sft, llama2-7b-reward, ...


def hugging_face_token() -> str:
    \"\"\"The Colab secret HF_TOKEN, else a token saved by an earlier login, else one typed in (the prompt waits).\"\"\"
    import huggingface_hub

    token = None
    if IN_COLAB:
        from google.colab import userdata

        try:
            token = userdata.get("HF_TOKEN")  # Colab asks once whether this notebook may read the secret
        except (userdata.SecretNotFoundError, userdata.NotebookAccessError):
            print("no Colab secret HF_TOKEN that this notebook may read")
    token = token or huggingface_hub.get_token()
    if not token:
        from getpass import getpass

        token = getpass("Hugging Face token (read access, from huggingface.co/settings/tokens): ").strip()
        huggingface_hub.login(token=token)  # checks the token and saves it for this session
    return token


if TINY:
    MODEL, RUNS = "tiny-llama2", "runs/tiny"
elif MODEL.startswith("meta-llama/"):
    os.environ["HF_TOKEN"] = hugging_face_token()  # the posttrain commands run in processes of their own
    from huggingface_hub import HfApi

    HfApi().auth_check(MODEL)  # raises GatedRepoError, saying why, when the token cannot read the model
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
    name: str,
    title: str,
    cells: list[tuple[str, str]],
    timed: list[tuple],
    extra: str = "",
    methods: tuple[str, ...] = (),
) -> nbformat.NotebookNode:
    """The shared opening (title, Open-in-Colab link, the commands it runs, its T4 time, what to do first,
    parameters, helpers, Drive, install, login), then the stage's own cells."""
    from t4_time import time_paragraph  # beside this file, like stages.py

    title = dedent(title).strip()
    heading, _, text = title.partition("\n")
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_link(name)})"
    parts = (heading, badge, text.strip(), commands_of(methods), time_paragraph(timed), BEFORE_YOU_RUN)
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
    for name, text in build_all().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote notebooks/{name}")


if __name__ == "__main__":
    main()
