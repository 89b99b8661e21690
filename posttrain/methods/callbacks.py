"""TrainerCallbacks posttrain adds to every TRL trainer: checkpoints that --resume can always continue from."""

from __future__ import annotations

from transformers import TrainerCallback

from posttrain.precision import check_weights_finite
from posttrain.runs import stopping


class StopOnSignal(TrainerCallback):
    """On a stop request (SIGTERM or a first Ctrl-C, see posttrain/runs/stopping.py), save a checkpoint of the step just
    finished and end training; train_and_finish then leaves the run unfinished and resumable."""

    def on_step_end(self, args, state, control, **kwargs):
        if stopping.requested():
            control.should_save = True
            control.should_training_stop = True
        return control


class NoFinalCheckpoint(TrainerCallback):
    """No checkpoint of the last step: the adapter and metrics.json are written right after it. A checkpoint there
    would also be a trap: resumed from it (a kill before metrics.json), transformers trains one step more than
    max_steps. Without it, --resume redoes the last steps from the checkpoint before and ends where an
    uninterrupted run ends."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps and not stopping.requested():
            control.should_save = False
        return control


class StopOnNonFiniteWeights(TrainerCallback):
    """Stop, before the step is saved, when an update made a trainable weight non-finite (see
    posttrain.precision.check_weights_finite), and count the steps fp16's loss scaler skipped: an overflow it handled
    by lowering the scale, which is how mixed precision is meant to work, reported in metrics.json."""

    def __init__(self, checkpoints):
        self.checkpoints = checkpoints
        self.skipped_steps = 0

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if getattr(optimizer, "step_was_skipped", False):  # accelerate's optimizer wrapper under a GradScaler
            self.skipped_steps += 1

    def on_step_end(self, args, state, control, model=None, **kwargs):
        check_weights_finite(model, state.global_step, self.checkpoints)
        return control
