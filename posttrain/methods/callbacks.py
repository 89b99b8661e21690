"""TrainerCallbacks posttrain adds to every TRL trainer."""

from __future__ import annotations

from transformers import TrainerCallback

from posttrain import stopping


class StopOnSignal(TrainerCallback):
    """On a stop request (SIGTERM or a first Ctrl-C, see posttrain/stopping.py), save a checkpoint of the step just
    finished and end training; train_and_finish then leaves the run unfinished and resumable."""

    def on_step_end(self, args, state, control, **kwargs):
        if stopping.requested():
            control.should_save = True
            control.should_training_stop = True
        return control
