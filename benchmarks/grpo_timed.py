"""`posttrain grpo ...` with each optimizer step's time split into generation, scoring and optimisation, for
benchmarks/rl_speed.py: wraps three methods of TRL's GRPOTrainer with timers, then runs the posttrain command.

    python benchmarks/grpo_timed.py TIMINGS.json grpo RECIPE [posttrain options]

Generation is GRPOTrainer._generate (sampling the answers); scoring is the rest of _generate_and_score_completions
(the reward functions, posttrain's reward run among them, and the old-policy log-probabilities); optimisation is the
rest of training_step (the loss's forward and backward passes). Each is summed per optimizer step (global_step when
the call began) and written to TIMINGS.json as {step: {generation_s, scoring_s, step_s}}.
"""

import functools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from trl import GRPOTrainer

from posttrain.cli import app

spent: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))


def timed(name: str, method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            spent[self.state.global_step][name] += time.perf_counter() - started

    return wrapper


GRPOTrainer._generate = timed("generation_s", GRPOTrainer._generate)
GRPOTrainer._generate_and_score_completions = timed("generate_and_score_s", GRPOTrainer._generate_and_score_completions)
GRPOTrainer.training_step = timed("step_s", GRPOTrainer.training_step)

if __name__ == "__main__":
    output = Path(sys.argv[1])
    try:
        status = app(sys.argv[2:], standalone_mode=False)  # a user error returns its exit status here
    finally:
        steps = {
            step: {
                "generation_s": round(times["generation_s"], 2),
                "scoring_s": round(times["generate_and_score_s"] - times["generation_s"], 2),
                "optimisation_s": round(times["step_s"] - times["generate_and_score_s"], 2),
            }
            for step, times in sorted(spent.items())
        }
        output.write_text(json.dumps(steps, indent=2) + "\n", encoding="utf-8")
    sys.exit(status or 0)
