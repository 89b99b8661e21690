"""TrainerCallbacks posttrain adds to every TRL trainer: checkpoints that --resume can always continue from."""

from __future__ import annotations

from transformers import TrainerCallback

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
