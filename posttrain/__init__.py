"""posttrain: the Llama 2 post-training recipe (SFT, reward, PPO, rejection sampling, DPO, ORPO) as 4-bit QLoRA."""

__version__ = "0.1.0"
