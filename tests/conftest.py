"""Shared fixtures: a private model cache, no hub access, and small recipes on tiny-llama2."""

import os
import tempfile
from pathlib import Path

import pytest
import yaml

# No test may reach the Hugging Face hub; offline mode makes such a call fail at once instead of timing out.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Built-in models are materialised once per test session (or into POSTTRAIN_CACHE, if the caller set one); under
# pytest-xdist the workers inherit the controller's folder and share it.
os.environ.setdefault("POSTTRAIN_CACHE", tempfile.mkdtemp(prefix="posttrain-cache-"))
# Under pytest-xdist (make test: one worker per core) each worker, and every process it starts, computes on one thread,
# so the workers do not fight over the cores. Set before torch is imported; a plain `pytest` keeps the defaults.
if "PYTEST_XDIST_WORKER" in os.environ:
    for threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[threads] = "1"


def pytest_collection_modifyitems(items):
    """The slow tests first (a stable sort), so that under several workers the longest ones start early instead of
    ending the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def quiet():
    from posttrain.cli.support import quiet_libraries

    quiet_libraries()


@pytest.fixture(scope="session")
def tiny_model():
    from posttrain.models.loading import resolve_model

    return resolve_model("tiny-llama2")


@pytest.fixture
def other_tokenizer_model(tiny_model, tmp_path):
    """tiny-llama2 with two tokens added: a model a tiny-llama2 reward run must refuse to judge."""
    import shutil

    from transformers import AutoTokenizer

    other = tmp_path / "other-tokenizer-model"
    shutil.copytree(tiny_model.base, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"])
    tokenizer.save_pretrained(other)
    return other


@pytest.fixture
def write_recipe(tmp_path):
    """Write a small SFT recipe on tiny-llama2 (keys overridable) and return its path."""

    def write(name: str = "recipe.yaml", **sections) -> Path:
        recipe = {
            "method": "sft",
            "model": {"name": "tiny-llama2", "quantization": "none"},
            "data": {"train": "builtin:pirate_sft", "max_length": 192},
            "train": {
                "max_steps": 2,
                "per_device_train_batch_size": 2,
                "logging_steps": 1,
                "activation_checkpointing": False,
                "report_to": "none",
            },
            "output_dir": str(tmp_path / "run"),
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(recipe.get(key), dict):
                recipe[key] = recipe[key] | value
            else:
                recipe[key] = value
        path = tmp_path / name
        path.write_text("# posttrain sft " + name + "\n" + yaml.safe_dump(recipe), encoding="utf-8")
        return path

    return write


@pytest.fixture
def jsonl(tmp_path):
    """Write rows to a .jsonl file and return its path."""
    import json

    def write(rows, name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path

    return write


# ---------------------------------------------------------------- finished runs on tiny-llama2, made once per session

KIND_REPLY = "Arr! Happy to help, the answer is four. Fair winds!"
RUDE_REPLY = "Arr! Go away and count yer own fingers, landlubber. Fair winds!"


def train_tiny_run(folder: Path, method: str, data: str, **train) -> Path:
    """A finished run folder of `method` on tiny-llama2 (full-precision base, a few steps)."""
    from posttrain.methods.common import run_method
    from posttrain.recipe import load_recipe

    recipe = {
        "method": method,
        "model": {"name": "tiny-llama2", "quantization": "none"},
        "data": {"train": data, "max_length": 192},
        "train": {"max_steps": 4, "per_device_train_batch_size": 2, "activation_checkpointing": False}
        | {"report_to": "none", "save_strategy": "no"}
        | train,
        "output_dir": str(folder),
    }
    path = folder.with_suffix(".yaml")
    path.write_text(f"# posttrain {method} {path.name}\n" + yaml.safe_dump(recipe), encoding="utf-8")
    run_method(load_recipe(str(path)), echo=lambda _: None)
    return folder


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory) -> Path:
    """An SFT run whose adapter visibly changes the model (a high learning rate on the pirate set)."""
    return train_tiny_run(tmp_path_factory.mktemp("runs") / "sft", "sft", "builtin:pirate_sft", learning_rate=1e-2)


@pytest.fixture(scope="session")
def reward_pairs(tmp_path_factory) -> Path:
    """Eight preference pairs: the kind reply is chosen over the rude one."""
    import json

    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"prompt": f"What is {i} plus {4 - i}?", "chosen": KIND_REPLY, "rejected": RUDE_REPLY} for i in range(8)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def reward_run(tmp_path_factory, reward_pairs) -> Path:
    """A reward run trained until it ranks every pair of `reward_pairs` right."""
    folder = tmp_path_factory.mktemp("runs") / "reward"
    return train_tiny_run(
        folder, "reward", str(reward_pairs), learning_rate=3e-3, max_steps=20, per_device_train_batch_size=4
    )


@pytest.fixture
def rl_recipe(tmp_path, sft_run, reward_run):
    """Write a small ppo or rs recipe from the session's SFT and reward runs and return its path; `model` and the
    method section's keys override the defaults."""

    def write(method: str = "ppo", model: dict | None = None, **section) -> Path:
        defaults = {
            "ppo": {"steps": 1, "batch_size": 2, "mini_batch_size": 2, "save_steps": 1},
            "rs": {"iterations": 1, "samples_per_prompt": 2, "batch_size": 2},
        }[method]
        recipe = {
            "method": method,
            "model": {"name": str(sft_run), "quantization": "none"} | (model or {}),
            "data": {"train": "builtin:pirate_sft", "max_length": 192},
            method: {"reward": str(reward_run), "max_new_tokens": 8} | defaults | section,
            "output_dir": str(tmp_path / method),
        }
        if method == "rs":  # ppo takes no train: section
            recipe["train"] = {"max_steps": 1, "activation_checkpointing": False, "report_to": "none"}
        path = tmp_path / f"{method}.yaml"
        path.write_text(f"# posttrain {method} {path.name}\n" + yaml.safe_dump(recipe), encoding="utf-8")
        return path

    return write


@pytest.fixture
def ppo_trainer():
    """Build posttrain's PPO trainer for a ppo recipe file, under the given accelerator (default: fp32 on CPU)."""

    def build(path: Path, accelerator=None, **settings):
        from accelerate import Accelerator

        from posttrain.methods import ppo
        from posttrain.methods.common import start_run
        from posttrain.recipe import load_recipe
        from posttrain.rl.ppo_trainer import PPOTrainer

        recipe = load_recipe(str(path))
        stage = ppo.prepare(recipe)
        start_run(stage, resume=False, overwrite=True)
        shared = ppo.build_shared_model(stage)
        accelerator = accelerator or Accelerator(cpu=True)
        prompts, ptx = stage.data.prompts, stage.data.ptx
        return PPOTrainer(shared, stage.tokenizer, prompts, recipe.ppo, stage.run, accelerator, lambda _: None, ptx)

    return build


# ---------------------------------------------------------------- `posttrain serve` in its own process, and a browser

CHROMIUM = Path("/usr/bin/chromium")  # playwright cannot download its own browser here
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class ServeProcess:
    """`posttrain serve ARGS...` in its own process on a free port, its output in a log file."""

    def __init__(self, log: Path):
        self.log, self.server, self.handle = log, None, None

    def start(self, *args: str) -> str:
        """Start the server and wait for its page (the models load first); returns the page's URL."""
        import subprocess
        import sys
        import time
        import urllib.request

        assert self.server is None, "stop the running server first"
        port = free_port()
        self.handle = self.log.open("a")
        command = [sys.executable, "-m", "posttrain", "serve", *args, "--port", str(port)]
        self.server = subprocess.Popen(command, stdout=self.handle, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 180
        while True:
            assert self.server.poll() is None, self.log.read_text()
            assert time.time() < deadline, "the page did not come up in 3 minutes"
            try:
                urllib.request.urlopen(url, timeout=5)
                return url
            except OSError:
                time.sleep(0.5)

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=30)
            self.handle.close()
            self.server = None


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def serve_process(tmp_path):
    """Start (and restart) `posttrain serve` in a subprocess; whatever still runs is stopped after the test."""
    process = ServeProcess(tmp_path / "serve.log")
    yield process
    process.stop()


@pytest.fixture
def chromium():
    """Debian's chromium, headless, driven by playwright."""
    assert CHROMIUM.is_file(), "the browser test needs Debian's chromium: apt-get install chromium (make test does)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
