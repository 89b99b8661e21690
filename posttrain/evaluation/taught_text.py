"""The text a ppo or rs run was taught to write: the assistant answers of the SFT data its start descends from.

The held-out check scores them with the base model beside the trained model's answers (issue #29): the base model
finds hand-written persona answers far less likely than a model's own greedy ones (64.28 against 15.87 on the demo),
so the trained model's answers should be no less likely than the text it was taught, not than the SFT model's.
The data is found from the run folders: the start run's recipe.yaml names data.train when it is an SFT run, else the
run it continued from (model.adapter or model.name) is searched the same way; with no SFT run in that chain, the
PPO-ptx data (also SFT answers) stands in. Each answer is scored alone, as the held-out answers are.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import UserError

MAX_ANSWERS = 500  # a seeded sample of a larger SFT set: the base model scores each one at the end of the run
MAX_HOPS = 8  # runs continued from runs, searched for the SFT one


@dataclass
class TaughtText:
    source: str  # where the answers come from (the SFT data, as its run's recipe names it)
    answers: list[str]  # at most MAX_ANSWERS of them
    total: int  # assistant answers in the data


def sft_data_of(run: Path | None) -> tuple[object, str] | None:
    """(data.train, data.format) of the SFT run `run` is or descends from; None when there is none."""
    from posttrain.models.loading import read_run_record

    for _ in range(MAX_HOPS):
        if run is None or not (run / "recipe.yaml").is_file():
            return None
        record = read_run_record(run)
        data = record.get("data") or {}
        if record.get("method") == "sft" and data.get("train"):
            return data["train"], data.get("format", "auto")
        model = record.get("model") or {}
        earlier = [Path(name) for name in (model.get("adapter"), model.get("name")) if name]
        run = next((path for path in earlier if (path / "recipe.yaml").is_file()), None)
    return None


def read_answers(spec, data_format: str = "auto") -> list[str]:
    """Every assistant turn's text in an SFT data key (one source or a mixture; weights ignored, max_rows kept)."""
    from posttrain.data.formats import normalise
    from posttrain.data.mixture import read_parts
    from posttrain.sections import DataSource

    items = spec if isinstance(spec, list) else [spec]
    sources = [DataSource(**item) if isinstance(item, dict) else item for item in items]
    answers = []
    for part in read_parts(sources):
        _, examples = normalise(part.rows, data_format)
        answers += [
            message["content"]
            for example in examples
            for message in example.get("messages", [])
            if message["role"] == "assistant" and isinstance(message.get("content"), str) and message["content"]
        ]
    return answers


def taught_text(start_run: Path | None, ptx_data: str | None, seed: int) -> tuple[TaughtText | None, str]:
    """The answers of the SFT data behind `start_run` (or `ptx_data`), and the plan's line about them."""
    found = sft_data_of(start_run)
    spec, data_format = found if found else (ptx_data, "auto")
    if not spec:
        return None, "taught      no SFT run behind the start and no ppo.ptx_data: fluency bar not measured"
    name = spec if isinstance(spec, str) else ", ".join(str(item) for item in spec)
    try:
        answers = read_answers(spec, data_format)
    except UserError as err:
        return None, f"taught      cannot read the SFT data {name} ({err}): fluency bar not measured"
    if not answers:
        return None, f"taught      the SFT data {name} holds no assistant answers: fluency bar not measured"
    kept = answers
    if len(answers) > MAX_ANSWERS:
        kept = [answers[i] for i in sorted(random.Random(seed).sample(range(len(answers)), MAX_ANSWERS))]
    note = f"{len(kept)} of {len(answers)}" if len(kept) < len(answers) else f"{len(answers)}"
    return TaughtText(
        name, kept, len(answers)
    ), f"taught      {note} answers of {name}, scored beside the held-out ones"
