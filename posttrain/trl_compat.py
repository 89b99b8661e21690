"""Every TRL import that depends on the TRL version lives here (trl 1.16: ORPO is experimental)."""

import warnings

with warnings.catch_warnings():
    # Importing trl.experimental warns that its APIs may change; pinning trl <2 and importing it here is our answer.
    warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

__all__ = ["ORPOConfig", "ORPOTrainer"]
