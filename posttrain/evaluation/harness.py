"""`posttrain eval harness`: lm-evaluation-harness's own tasks and metrics on a model loaded as posttrain loads it.

MODEL (a run folder's 4-bit base with its adapter, a merged folder, an alias or a hub id) is loaded by
`load_run_model` and handed to lm-eval as a ready model object (`HFLM(pretrained=model, tokenizer=tokenizer)`), so
lm-eval never reloads it from a name and the run's own tokenizer and chat template are the ones evaluated. Tasks
(lm-eval's, or local YAMLs under --include-path) are built before the model loads, so an unknown name or a dataset
that cannot be fetched fails in seconds instead of after minutes of loading.
"""

from __future__ import annotations

import difflib
import logging
import numbers
from collections.abc import Callable
from pathlib import Path

from posttrain.errors import UserError

INSTALL_HINT = "pip install 'posttrain[eval]'"


def harness_eval(
    model_name: str,
    tasks: list[str],
    *,
    include_path: Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    apply_chat_template: bool = False,
    chat_template: str = "auto",
    echo: Callable[[str], None] = print,
) -> dict:
    """The report: per task its metrics (value and standard error), samples scored, and the settings."""
    from posttrain.models.loading import load_inference_tokenizer, load_run_model

    tasks = list(dict.fromkeys(tasks))  # a name given twice is evaluated once
    check_settings(tasks, include_path, limit, num_fewshot, batch_size)
    lm_eval = import_lm_eval()
    load_inference_tokenizer(model_name, chat_template)  # a wrong MODEL fails before lm-eval indexes its tasks
    # lm-eval warns about choices made here on purpose (a model object instead of a name, shots overridden)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    echo(f"finding {len(tasks)} task(s) among lm-eval's" + (f" and {include_path}'s" if include_path else ""))
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path) if include_path else None)
    specs = build_tasks(manager, tasks)
    echo(f"loading {model_name}")
    model, tokenizer = load_run_model(model_name, chat_template=chat_template)
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=specs,
        task_manager=manager,
        num_fewshot=num_fewshot,
        limit=limit,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=apply_chat_template,  # few-shot examples as earlier turns of the chat
        log_samples=False,
    )
    return {
        "mode": "harness",
        "model": model_name,
        "tasks": tasks,
        "include_path": str(include_path) if include_path else None,
        "lm_eval_version": results.get("lm_eval_version") or lm_eval_version(),
        "settings": {
            "limit": limit,
            "num_fewshot": num_fewshot,
            "batch_size": batch_size,
            "apply_chat_template": apply_chat_template,
            "chat_template": chat_template if apply_chat_template else None,
        },
        "results": {name: task_record(results, name) for name in results["results"]},
        "groups": {name: task_record(results, name, "groups") for name in results.get("groups", {})},
    }


def check_settings(tasks: list[str], include_path: Path | None, limit, num_fewshot, batch_size: int) -> None:
    if not tasks:
        raise UserError("--tasks names no task. Give lm-eval task names separated by commas, e.g. truthfulqa_mc2.")
    if include_path is not None and not include_path.is_dir():
        raise UserError(f"--include-path {include_path} is not a folder; give the folder that holds your task YAMLs.")
    for option, value, least in (
        ("--limit", limit, 1),
        ("--num-fewshot", num_fewshot, 0),
        ("--batch-size", batch_size, 1),
    ):
        if value is not None and value < least:
            raise UserError(f"{option} must be at least {least}, got {value}.")


def import_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise UserError(
            f"`posttrain eval harness` needs lm-evaluation-harness, which is not installed. Install it with: "
            f"{INSTALL_HINT}"
        ) from None
    return lm_eval


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def build_tasks(manager, names: list[str]) -> list:
    """lm-eval's Task and Group objects for the names, their datasets fetched, before any model is loaded."""
    built = [build_task(manager, name) for name in names]
    specs = [item for task in built for item in (task if isinstance(task, list) else [task])]
    try:
        manager.load(specs)  # built objects are only gathered here: lm-eval's check that no task is asked for twice
    except ValueError as err:
        raise UserError(f"--tasks: {err}. Name a group or its tasks, not both.") from None
    return specs


def build_task(manager, name: str):
    """lm-eval's Task (or Group, or a tag's list of Tasks) for `name`; its dataset is fetched here."""
    if name not in manager.all_tasks and Path(name).suffix != ".yaml":
        close = difflib.get_close_matches(name, manager.all_tasks, n=8, cutoff=0.6)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise UserError(
            f"--tasks: lm-eval knows no task {name!r}.{hint} `lm-eval ls tasks` lists them all; a task of your own "
            "is a YAML in a folder given with --include-path."
        )
    try:
        loaded = manager.load([name])
    except Exception as err:  # lm-eval and datasets raise many types for a bad YAML or an unreachable dataset
        raise UserError(
            f"--tasks: lm-eval could not build task {name!r} ({type(err).__name__}: {str(err)[:300]}). Check the "
            "task's YAML and its data files, or the network and a Hugging Face login for a hub dataset."
        ) from None
    if name in loaded["groups"]:
        return loaded["groups"][name]
    if name in loaded["tasks"]:
        return loaded["tasks"][name]
    return list(loaded["tasks"].values())  # a tag (or a YAML file): its tasks, each scored on its own


def task_record(results: dict, name: str, section: str = "results") -> dict:
    """One task's (or group's) metrics as {metric: {value, stderr}}, with the samples it scored."""
    raw = results[section][name]
    metrics = {}
    for key, value in raw.items():
        metric, _, kept = key.partition(",")
        if not kept or metric.endswith("_stderr") or not isinstance(value, numbers.Real):
            continue  # "alias", "name", "sample_len"; each stderr is read next to its metric
        stderr = raw.get(f"{metric}_stderr,{kept}")
        label = metric if kept == "none" else f"{metric} ({kept})"  # lm-eval's filter, e.g. strict-match
        metrics[label] = {
            "value": float(value),
            "stderr": float(stderr) if isinstance(stderr, numbers.Real) else None,  # "N/A" for some
        }
    samples = results.get("n-samples", {}).get(name, {})
    return {
        "metrics": metrics,
        "samples": samples.get("effective"),
        "samples_in_task": samples.get("original"),
        "num_fewshot": results.get("n-shot", {}).get(name),
        "task_version": results.get("versions", {}).get(name),
        "higher_is_better": results.get("higher_is_better", {}).get(name, {}),
    }


def harness_rows(report: dict) -> list[tuple[str, str]]:
    rows = [("model", report["model"]), ("lm-eval", report["lm_eval_version"])]
    for name, record in {**report["results"], **report["groups"]}.items():
        shots = f", {record['num_fewshot']}-shot" if record.get("num_fewshot") is not None else ""
        for metric, score in record["metrics"].items():
            error = f" ± {score['stderr']:.4f}" if score["stderr"] is not None else ""
            samples = f" ({record['samples']} samples{shots})" if record["samples"] is not None else ""
            rows.append((f"{name} {metric}", f"{score['value']:.4f}{error}{samples}"))
    return rows
