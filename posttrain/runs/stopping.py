"""A clean stop on preemption: SIGTERM (a scheduler or a Colab session ending) or a first Ctrl-C asks training to
stop. The trainer finishes its current step, saves a checkpoint and the command exits with STOPPED_EXIT, saying
how to resume. A second Ctrl-C stops at once, without a checkpoint (a second SIGTERM kills the process).

TRL trainers look at the request through methods/callbacks.py; posttrain's PPO loop and rejection sampling's
fine-tuning rounds look at it after each step.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

STOPPED_EXIT = 3  # stopped on request with a checkpoint to resume from; 2 is a user error, 1 a crash
_requested: str | None = None  # the name of the signal that asked for a stop


class Stopped(Exception):
    """Training stopped on request after `step`, with a checkpoint of it saved."""

    def __init__(self, step: int, checkpoint):
        super().__init__(f"{_requested or 'stop requested'}: stopped after step {step}; checkpoint saved: {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


def requested() -> bool:
    return _requested is not None


def raise_if_requested(step: int, run) -> None:
    """Call after the trainer saved its checkpoint on a stop request: leave the run unfinished, resumable."""
    if requested():
        raise Stopped(step, run.latest_checkpoint())


@contextmanager
def stop_signals_caught():
    """While training, SIGTERM and a first Ctrl-C only ask for a stop; the previous handlers come back after."""
    global _requested
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def ask_to_stop(signum, frame):
        global _requested
        _requested = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: KeyboardInterrupt at once
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print(
            f"\n{_requested}: stopping after this step with a checkpoint (press Ctrl-C again to stop at once, "
            "without one)",
            file=sys.stderr,
            flush=True,
        )

    for sig in previous:
        signal.signal(sig, ask_to_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested = None
