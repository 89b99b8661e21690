"""The RLHF acceptance of issue #29, summarised from finished runs: each seed's held-out bars, and the pooled pairs.

Every `posttrain ppo` and `posttrain rs` run ends with a held-out check (metrics.json's `heldout`, one row per prompt
in heldout.jsonl). This script reads the runs named, one per seed, and writes for each method:
- per seed: the win rate over the SFT run under the reward run the policy optimised (95% bootstrap interval) and
  under the second judge, the base-model perplexity of the answers beside the SFT data's own answers', the shares of
  looping and cut-off answers of both models, the mean answer length and score, PPO's highest KL against its budget,
  and which bars the run met;
- pooled: the win rate of all the seeds' pairs together (360 for three seeds of 120 prompts) under both judges, with
  the counts, by the held-out check's own outcome() (1000 resamples, seed 42), and the pooled loop and cut-off shares.
Nothing is trained or generated here. Writes benchmarks/results/rlhf_acceptance.json.

    python benchmarks/rlhf_acceptance.py --ppo runs/smollm2-135m-ppo-seed{42,1,2} --rs runs/smollm2-135m-rs-seed{42,1,2}
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from posttrain.evaluation.heldout import SIDES, outcome

RESULTS = Path(__file__).parent / "results" / "rlhf_acceptance.json"
SEED = 42  # the pooled bootstrap's


def seed_row(run: Path) -> dict:
    """One run's held-out figures and bars, as its metrics.json holds them."""
    heldout = json.loads((run / "metrics.json").read_text())["heldout"]
    bars = heldout["bars"]
    return {
        "run": str(run),
        "win_rate": heldout["win_rate"],
        "win_rate_ci95": heldout["win_rate_ci95"],
        "wins_losses_ties": heldout["wins_losses_ties"],
        "judge_win_rate": heldout["judge"]["win_rate"],
        "judge_wins_losses_ties": heldout["judge"]["wins_losses_ties"],
        "trained": heldout["trained"],
        "start": heldout["start"],
        "taught_perplexity": heldout["taught"]["perplexity"],
        "kl": bars.get("kl"),  # PPO only: rs has no KL term
        "passes": {bar: figures["pass"] for bar, figures in bars.items()},
    }


def pooled(runs: list[Path]) -> dict:
    """All the runs' held-out pairs together: win rates under both judges, loop and cut-off shares."""
    rows = [json.loads(line) for run in runs for line in (run / "heldout.jsonl").read_text().splitlines()]
    summary = {"pairs": len(rows)}
    for judge, winner in (("reward", "winner"), ("judge", "judge_winner")):
        # heldout.jsonl names the winner by role; the held-out check's outcome() takes its pairs' sides
        summary[judge] = outcome([{"winner": SIDES.get(row[winner], "tie")} for row in rows], SEED)
    for side in ("trained", "start"):
        summary[side] = {
            "loops": statistics.fmean(row[f"{side}_loop"] for row in rows),
            "cut_off": statistics.fmean(row[f"{side}_cut_off"] for row in rows),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ppo", nargs="+", type=Path, default=[], help="PPO run folders, one per seed")
    parser.add_argument("--rs", nargs="+", type=Path, default=[], help="rejection-sampling run folders, one per seed")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = {
        method: {"seeds": [seed_row(run) for run in runs], "pooled": pooled(runs)}
        for method, runs in (("ppo", args.ppo), ("rs", args.rs))
        if runs
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    for method, result in results.items():
        for row in result["seeds"]:
            low, high = row["win_rate_ci95"]
            failed = [bar for bar, passed in row["passes"].items() if passed is False]
            print(
                f"{method} {row['run']}: win {row['win_rate']:.3f} ({low:.3f} to {high:.3f}), "
                f"judge {row['judge_win_rate']:.3f}, perplexity {row['trained']['perplexity']:.2f} "
                f"(taught {row['taught_perplexity']:.2f}), loops {row['trained']['loops']:.3f} "
                f"(start {row['start']['loops']:.3f}), cut off {row['trained']['cut_off']:.3f}; "
                f"failed: {', '.join(failed) or 'none'}"
            )
        pool = result["pooled"]
        for judge in ("reward", "judge"):
            rate, (low, high) = pool[judge]["win_rate"], pool[judge]["win_rate_ci95"]
            print(f"{method} pooled {pool['pairs']} pairs, {judge}: {rate:.3f} ({low:.3f} to {high:.3f})")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
