"""Notebook 01 installs posttrain from a wheel built from this checkout (`make wheel`), as a Colab user does: its cells
up to the install cell run unchanged (TINY = False) in a fresh virtual environment, with the wheel beside them.

The fresh environment gets posttrain's dependencies the way Colab has its own preinstalled: already there (linked
from this session's environment, posttrain itself left out), and pip may not download anything (PIP_NO_INDEX)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


def preinstalled_dependencies(folder: Path) -> Path:
    """This environment's packages, posttrain and its editable-install hooks left out, as links in `folder`."""
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("posttrain", "_editable_impl_posttrain", "__editable__")):
            (folder / entry.name).symlink_to(entry)
    return folder


def cells_up_to_install(book: nbformat.NotebookNode) -> str:
    code = [cell.source for cell in book.cells if cell.cell_type == "code"]
    [install] = [i for i, source in enumerate(code) if "POSTTRAIN_GIT" in source]
    return "\n\n".join(code[: install + 1])


@pytest.mark.slow  # builds the wheel (pip fetches the build backend) and a virtual environment: about a minute
def test_notebook_01_installs_the_wheel_it_finds_into_a_fresh_environment(tmp_path):
    wheels = tmp_path / "content"  # Colab's /content, where an uploaded wheel lands: the notebook's working folder
    built = subprocess.run(
        ["make", "-s", "wheel", f"PYTHON={sys.executable}", f"WHEEL_DIR={wheels}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = wheels.glob("posttrain-*.whl")

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    site = subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    site = Path(site.decode().strip())
    for bundled in site.glob("setuptools*"):  # venv's own old setuptools would shadow the one torch needs
        shutil.rmtree(bundled)
    deps = preinstalled_dependencies(tmp_path / "preinstalled")
    (site / "preinstalled.pth").write_text(f"{deps}\n")

    script = cells_up_to_install(nbformat.read(ROOT / "notebooks" / "01_sft.ipynb", as_version=4))
    assert script.startswith("TINY = False")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PATH": f"{environment / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    ran = subprocess.run([python, "-c", script], cwd=wheels, env=env, capture_output=True, text=True, timeout=600)
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output
    assert f"-m pip install --quiet {wheel}" in output
    assert "precision" in output and "(model.precision: auto)" in output  # `posttrain env` ran

    which = [python, "-c", "import posttrain; print(posttrain.__file__)"]
    where = subprocess.check_output(which, cwd=wheels, env=env, text=True)
    assert Path(where.strip()).is_relative_to(environment)  # the wheel's copy, not this checkout
    assert (environment / "bin" / "posttrain").is_file()
