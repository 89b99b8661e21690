"""Every TRL import that depends on the TRL version lives here (trl 1.16: ORPO is experimental)."""

from trl.experimental.orpo import ORPOConfig, ORPOTrainer

__all__ = ["ORPOConfig", "ORPOTrainer"]
