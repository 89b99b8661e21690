"""The main job end to end on the real embedded model, smollm2-135m, with few steps."""

import pytest
from typer.testing import CliRunner

from posttrain.cli import app


@pytest.mark.slow
def test_quickstart_trains_smollm2_and_shows_answers_before_and_after(tmp_path):
    result = CliRunner().invoke(app, ["quickstart", "--output-dir", str(tmp_path / "qs"), "--max-steps", "4"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.index("Before training") < out.index("After training") < out.index("Run folder:")
    assert out.count("Q: Why is the sky blue?") == 2
    assert "quantization nf4 (4-bit)" in out
    run = tmp_path / "qs"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "metrics.json").is_file()
