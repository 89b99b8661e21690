"""The Colab notebooks: each runs headless in TINY mode (tiny-llama2, a few steps on the CPU) and leaves its run
folders behind, and the committed files are exactly what notebooks/build.py writes: no outputs, no counts."""

import importlib.util
import os
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


def test_committed_notebooks_are_what_build_py_writes(monkeypatch):
    monkeypatch.syspath_prepend(str(NOTEBOOKS))  # build.py imports stages.py from beside it
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    built = build.build_all()
    assert sorted(built) == sorted(PRODUCES)
    stale = [name for name, text in built.items() if (NOTEBOOKS / name).read_text(encoding="utf-8") != text]
    assert stale == [], "edit notebooks/stages.py or build.py, then run: python notebooks/build.py"


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
