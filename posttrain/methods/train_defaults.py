"""posttrain's own defaults for the `train:` section (the recipe's values win). Plain data, so that `posttrain
plan` and `recipes --keys` can read them without importing a method module (and TRL with it)."""

# Defaults every TRL-trained method puts under the recipe's `train:`.
COMMON_TRAIN_DEFAULTS = {
    "per_device_train_batch_size": 4,
    "num_train_epochs": 1,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,
    "logging_steps": 5,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
    "report_to": ["tensorboard"],
    "seed": 42,
}
# posttrain's own values for TRL keys, resolved in prepare_with_data before the TRL config is built.
AUTO_TRAIN_DEFAULTS = {"activation_checkpointing": "auto"}  # on only when the plan says the run needs it to fit

# GRPO, sized for a T4: 4 answers to 1 prompt per micro-batch, 2 prompts per optimiser step, short answers.
GRPO_TRAIN_DEFAULTS = COMMON_TRAIN_DEFAULTS | {
    "learning_rate": 2.0e-5,
    "num_generations": 4,
    "max_completion_length": 128,
    "gradient_accumulation_steps": 2,
    "logging_steps": 1,
}
