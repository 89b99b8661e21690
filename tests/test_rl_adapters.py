"""PPO and rejection sampling load the SFT and reward adapters strictly: a damaged or mismatched adapter file is
an error naming the file and the keys, never a network that silently keeps random or zero LoRA weights."""

import shutil

import pytest
from safetensors.torch import load_file, save_file

from posttrain.errors import UserError
from posttrain.methods import rs
from posttrain.recipe import load_recipe
from posttrain.rl.setup import load_base_and_lora


def damaged_copy(run, folder, how: str):
    shutil.copytree(run, folder)
    path = folder / "adapter" / "adapter_model.safetensors"
    state = load_file(str(path))
    key = sorted(k for k in state if "lora_A" in k)[0]
    if how == "renamed":
        state[key.replace("lora_A", "lora_Z")] = state.pop(key)
    else:
        del state[key]
    save_file(state, str(path))
    return folder


@pytest.mark.parametrize("damaged", ["sft", "reward"])
@pytest.mark.parametrize("how", ["renamed", "dropped"])
def test_a_damaged_adapter_is_refused_with_its_keys(tmp_path, rl_recipe, sft_run, reward_run, damaged, how):
    from posttrain.rl.shared_model import SharedModel

    run = damaged_copy(sft_run if damaged == "sft" else reward_run, tmp_path / f"damaged-{damaged}", how)
    path = rl_recipe("rs", model={"name": str(run)}) if damaged == "sft" else rl_recipe("rs", reward=str(run))
    recipe = load_recipe(str(path))
    stage = rs.prepare(recipe)
    base, lora = load_base_and_lora(stage)
    with pytest.raises(UserError, match=r"damaged-.*adapter.*(missing|unexpected)"):
        SharedModel.for_sampling(base, lora, stage.adapter, stage.data.rewards)
