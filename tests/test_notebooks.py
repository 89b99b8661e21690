"""The Colab notebooks: each runs headless in TINY mode (tiny-llama2, a few steps on the CPU) and leaves its run
folders behind, and the committed files are exactly what notebooks/build.py writes: no outputs, no counts."""

import importlib.util
import os
import shlex
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# What each notebook leaves in its working directory in TINY mode.
PRODUCES = {
    "01_sft.ipynb": ["runs/tiny-sft", "replies/base.jsonl", "replies/sft.jsonl"],
    "02_reward_rs_ppo.ipynb": ["runs/tiny-sft", "runs/tiny-reward", "runs/tiny-rs", "runs/tiny-ppo"],
    "03_dpo.ipynb": ["runs/tiny-sft", "runs/tiny-dpo", "replies/dpo.jsonl"],
    "04_orpo.ipynb": ["runs/tiny-orpo", "replies/base.jsonl", "replies/orpo.jsonl"],
    "05_chat_merge.ipynb": ["runs/tiny-sft", "replies/run.jsonl", "models/tiny-sft-merged/model.safetensors"],
    "06_kto_grpo.ipynb": ["runs/tiny-sft", "runs/tiny-reward", "runs/tiny-kto", "runs/tiny-grpo", "replies/grpo.jsonl"],
    "07_gatt_distill.ipynb": [
        "runs/tiny-sft",
        "runs/tiny-reward",
        "runs/tiny-gatt",
        "runs/tiny-distill",
        "evals/gatt-sft.json",
        "evals/gatt-gatt.json",
    ],
}


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_every_notebook_is_run_here():
    assert sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")) == sorted(PRODUCES)


@pytest.mark.parametrize("name", sorted(PRODUCES))
def test_committed_notebook_has_no_outputs_and_opens_with_the_tiny_switch(name):
    book = read(name)
    nbformat.validate(book)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == [None] * len(code)
    assert [cell.outputs for cell in code] == [[]] * len(code)
    assert code[0].source.startswith("TINY = False  #") and "parameters" in code[0].metadata.tags


def load_build(monkeypatch):
    """notebooks/build.py as a module (it imports opening.py, stages.py and t4_time.py from beside it)."""
    monkeypatch.syspath_prepend(str(NOTEBOOKS))
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def test_committed_notebooks_are_what_build_py_writes(monkeypatch):
    built = load_build(monkeypatch).build_all()
    assert sorted(built) == sorted(PRODUCES)
    stale = [name for name, text in built.items() if (NOTEBOOKS / name).read_text(encoding="utf-8") != text]
    assert stale == [], "edit notebooks/stages.py or build.py, then run: python notebooks/build.py"


def test_each_notebook_opens_with_its_colab_link_its_t4_time_and_what_to_do(monkeypatch):
    build = load_build(monkeypatch)
    from t4_time import notebook_times

    for name, time in notebook_times().items():
        opening = read(name).cells[0].source
        assert f"]({build.colab_link(name)})" in opening
        assert f"Estimated time on a free Colab T4: about {time}**" in opening and "not a measurement" in opening
        assert "## Before you run it" in opening and "make wheel" in opening and "HF_TOKEN" in opening


def test_readme_links_each_notebook_and_gives_its_t4_time(monkeypatch):
    build = load_build(monkeypatch)
    from t4_time import notebook_times

    readme = (NOTEBOOKS.parent / "README.md").read_text(encoding="utf-8")
    for name, time in notebook_times().items():
        [row] = [line for line in readme.splitlines() if line.startswith(f"| [`{name}`]")]
        assert f"]({build.colab_link(name)})" in row and f"| about {time}" in row, (name, time)


def install_commands(folder: Path, git_url: str = "") -> list[str]:
    """The commands notebook 01's install cell runs (TINY = False) in `folder`, with POSTTRAIN_GIT set to `git_url`."""
    [install] = [cell.source for cell in read("01_sft.ipynb").cells if "POSTTRAIN_GIT = " in cell.source]
    install = install.replace('POSTTRAIN_GIT = ""', f"POSTTRAIN_GIT = {git_url!r}")
    commands = []
    namespace = {"TINY": False, "Path": Path, "os": os, "shlex": shlex, "sys": sys, "sh": commands.append}
    cwd = Path.cwd()
    try:
        os.chdir(folder)
        exec(install, namespace)
    finally:
        os.chdir(cwd)
    return commands


def test_install_cell_takes_the_newest_wheel_then_the_git_url_then_pypi(tmp_path):
    pip = f"{sys.executable} -m pip install --quiet"
    assert install_commands(tmp_path) == [f"{pip} posttrain", "posttrain env"]
    git = "git+https://example.org/posttrain"
    assert install_commands(tmp_path, git)[0] == f"{pip} 'posttrain @ {git}'"
    older, newer = tmp_path / "posttrain-0.1.0-py3-none-any.whl", tmp_path / "posttrain-0.2.0-py3-none-any.whl"
    newer.touch()
    older.touch()
    os.utime(newer, (2e9, 2e9))
    assert install_commands(tmp_path, git)[0] == f"{pip} {newer}"


def train_commands(run: Path, *files: str) -> list[str]:
    """What the notebooks' `train` helper runs for a run folder that holds `files`."""
    for name in files:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("{}")
    [helpers] = [cell.source for cell in read("01_sft.ipynb").cells if "def train(" in cell.source]
    namespace = {"TINY": True}
    cwd = Path.cwd()
    try:
        os.chdir(run.parent)  # the helpers write questions.jsonl
        exec(helpers, namespace)
    finally:
        os.chdir(cwd)
    commands = []
    namespace["sh"] = commands.append
    namespace["train"]("posttrain sft r.yaml", str(run))
    return commands


def test_train_helper_starts_continues_or_keeps_a_run_as_its_folder_says(tmp_path):
    def command(name: str, again: str = "") -> list[str]:
        return [f"posttrain sft r.yaml --output-dir {tmp_path / name}{again}"]

    assert train_commands(tmp_path / "new") == command("new")
    assert train_commands(tmp_path / "a", "recipe.yaml") == command("a", " --overwrite")
    resumed = train_commands(tmp_path / "b", "recipe.yaml", "checkpoints/checkpoint-20/adapter_model.safetensors")
    assert resumed == command("b", " --resume")
    built = train_commands(tmp_path / "c", "recipe.yaml", "gatt/dialogues.jsonl")  # gatt's sampling is progress
    assert built == command("c", " --resume")
    assert train_commands(tmp_path / "d", "recipe.yaml", "metrics.json") == []  # finished: kept


@pytest.mark.slow  # each notebook runs end to end (20-40 s)
@pytest.mark.parametrize("name", sorted(PRODUCES))
def test_notebook_runs_in_tiny_mode(name, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    book = read(name)
    [parameters] = [cell for cell in book.cells if "parameters" in cell.metadata.get("tags", [])]
    parameters.source = "TINY = True"
    # The kernel inherits this environment: the venv's `posttrain` first on PATH, no hub, the session's model cache.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    missing = [path for path in PRODUCES[name] if not (tmp_path / path).exists()]
    assert missing == []
    runs = [tmp_path / path for path in PRODUCES[name] if path.startswith("runs/")]
    assert all((run / "adapter" / "adapter_model.safetensors").is_file() for run in runs)
    assert all((run / "metrics.json").is_file() for run in runs)
