"""PPO and rejection sampling refuse a reward run that renders conversations unlike the policy: another chat
template or other special tokens mean the reward run would score text laid out unlike its training data."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from posttrain.cli import app


def reward_copy_with(reward_run, folder, chat_template=None, **config):
    shutil.copytree(reward_run, folder)
    if chat_template:
        (folder / "chat_template.jinja").write_text(chat_template)
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | config))
    return folder


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        ({"chat_template": "{{ messages[0]['content'] }}"}, "the chat template"),
        ({"pad_token": "</s>"}, "pad_token token '</s>' (reward) vs '<unk>' (policy)"),
        ({"eos_token": "<unk>"}, "eos_token token '<unk>' (reward) vs '</s>' (policy)"),
    ],
)
def test_a_reward_run_with_another_template_or_special_tokens_is_refused(
    tmp_path, rl_recipe, reward_run, sft_run, change, difference
):
    other = reward_copy_with(reward_run, tmp_path / "other-reward", **change)
    result = CliRunner().invoke(app, ["ppo", str(rl_recipe("ppo", reward=str(other))), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert str(other) in result.output and str(sft_run) in result.output and difference in result.output
