"""MODEL resolution: aliases, local folders, run folders, and the hub's failures in plain words."""

import hashlib

import pytest
import torch

from posttrain.errors import UserError
from posttrain.models.aliases import build_tiny_llama2
from posttrain.models.loading import hub_errors, load_base_model, resolve_model


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_tiny_llama2_builds_identically_every_time(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    build_tiny_llama2(first)
    build_tiny_llama2(second)
    assert digest(first) == digest(second)


def test_a_local_model_folder_loads_like_a_hub_model(tiny_model, tmp_path):
    import shutil

    local = tmp_path / "my-llama"
    shutil.copytree(tiny_model.base, local)
    ref = resolve_model(str(local))
    assert ref.base == str(local.resolve()) and not ref.is_run
    model = load_base_model(ref, "none", True, "fp32")
    assert type(model).__name__ == "LlamaForCausalLM"


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(UserError, match="neither a model folder"):
        resolve_model(str(tmp_path))


def test_missing_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(UserError, match="model path not found"):
        resolve_model(str(tmp_path / "gone"))


def test_unfinished_run_folder_is_not_a_model(tmp_path):
    (tmp_path / "recipe.yaml").write_text("method: sft\n")
    with pytest.raises(UserError, match="without a finished adapter"):
        resolve_model(str(tmp_path))


def _gated_error_from_hub():
    from unittest.mock import Mock

    from huggingface_hub.errors import GatedRepoError

    return GatedRepoError("403 Client Error: gated repo", response=Mock(status_code=403, headers={}))


@pytest.mark.parametrize(
    "failure",
    [_gated_error_from_hub, lambda: OSError("You are trying to access a gated repo. 401 Client Error.")],
    ids=["hub", "transformers"],
)
def test_gated_hub_model_asks_for_a_login(failure):
    with (
        pytest.raises(UserError, match="huggingface-cli login` or set HF_TOKEN"),
        hub_errors("meta-llama/Llama-2-7b-hf"),
    ):
        raise failure()


def test_offline_hub_model_says_so():
    from posttrain.models.loading import load_tokenizer

    with pytest.raises(UserError, match="hub cannot be reached"):
        load_tokenizer(resolve_model("meta-llama/Llama-2-7b-hf"), "llama2")


@pytest.mark.slow
def test_smollm2_alias_is_a_real_llama_with_gqa():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model("smollm2-135m").base)
    assert config.model_type == "llama"
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention


def test_gradients_still_reach_the_input_of_4bit_layers_after_an_inference_pass(tiny_model):
    """bitsandbytes repacks 4-bit weights on CPU for inference, after which no gradient crossed them; the
    loader keeps the trainable layout, so a generation before training (PPO, quickstart) changes no gradient."""

    def input_gradient(after_inference: bool) -> torch.Tensor:
        model = load_base_model(tiny_model, "nf4", True, "fp32")
        ids = torch.tensor([[1, 5, 6, 7, 8]])
        if after_inference:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
        model.train()
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_()
        model(inputs_embeds=embeddings).logits.sum().backward()
        return embeddings.grad

    torch.testing.assert_close(input_gradient(after_inference=True), input_gradient(after_inference=False))
