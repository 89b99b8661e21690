"""The bars a ppo or rs run meets or misses on its held-out check (issue #29), and the lines the run prints.

1. fluency: the base model's perplexity of the trained model's answers is no higher than of the SFT data's own
   answers (the text the model was taught to write);
2. no degenerate text: no larger a share of looping answers than the start model's, and at most 5% cut off at
   max_new_tokens;
3. a second judge: a reward run the policy never optimised prefers the trained model (win rate above 0.5), and the
   optimised reward run's 95% interval lies above 0.5;
and for PPO, the KL to the start at every logged step within the recipe's ppo.kl_budget. A bar that cannot be
measured (no SFT data found, no second judge, no budget) has pass None and prints n/a.
"""

from __future__ import annotations

CUT_OFF_LIMIT = 0.05  # most answers cut off at max_new_tokens
VERDICT = {True: "pass", False: "FAIL", None: "n/a"}


def heldout_bars(report: dict) -> dict:
    """Each bar's measured values and whether it passes, from a held-out report."""
    trained, start, taught, judge = report["trained"], report["start"], report["taught"], report["judge"]
    fluent = trained["perplexity"] is not None and taught is not None and taught["perplexity"] is not None
    return {
        "fluency": {
            "trained_perplexity": trained["perplexity"],
            "taught_perplexity": taught and taught["perplexity"],
            "pass": trained["perplexity"] <= taught["perplexity"] if fluent else None,
        },
        "loops": {"trained": trained["loops"], "start": start["loops"], "pass": trained["loops"] <= start["loops"]},
        "cut_off": {
            "trained": trained["cut_off"],
            "start": start["cut_off"],
            "limit": CUT_OFF_LIMIT,
            "pass": trained["cut_off"] <= CUT_OFF_LIMIT,
        },
        "reward_interval": {"ci95": report["win_rate_ci95"], "pass": report["win_rate_ci95"][0] > 0.5},
        "second_judge": {
            "run": judge and judge["run"],
            "win_rate": judge and judge["win_rate"],
            "pass": judge["win_rate"] > 0.5 if judge else None,
        },
    }


def kl_bar(kl_by_step: dict[int, float], budget: float | None) -> dict:
    """PPO's KL per response (summed over its tokens) at its highest logged step, against ppo.kl_budget."""
    step = max(kl_by_step, key=kl_by_step.get)
    highest = kl_by_step[step]
    within = highest <= budget if budget is not None else None
    return {"highest": highest, "step": step, "budget": budget, "pass": within}


def heldout_rows(report: dict) -> list[str]:
    """The summary lines printed at the end of the run: the measures, then each bar with pass, FAIL or n/a."""
    prompts = report["prompts"]
    lines = [f"held-out    {prompts} prompts, greedy: win rate {outcome_text(report)}"]
    if report["judge"]:
        lines.append(f"  judge     {report['judge']['run']}: win rate {outcome_text(report['judge'])}")
    for role in ("start", "trained"):
        part = report[role]
        lines.append(
            f"  {role:<8}  score {part['mean_score']:.3f}, base-model perplexity {number(part['perplexity'])}, "
            f"{part['mean_tokens']:.1f} tokens, {count(part['cut_off'], prompts)} cut off, "
            f"{count(part['loops'], prompts)} looping"
        )
    if report["taught"]:
        taught = report["taught"]
        lines.append(
            f"  taught    base-model perplexity {number(taught['perplexity'])} of {taught['answers']} answers of "
            f"{taught['source']} (the SFT data)"
        )
    return lines + [f"  {VERDICT[bar['pass']]:<8}  {text}" for bar, text in bar_texts(report)]


def bar_texts(report: dict) -> list[tuple[dict, str]]:
    bars, prompts = report["bars"], report["prompts"]
    fluency, loops, cut_off = bars["fluency"], bars["loops"], bars["cut_off"]
    low, high = bars["reward_interval"]["ci95"]
    second = bars["second_judge"]
    texts = [
        (
            fluency,
            f"fluency: base-model perplexity of the trained answers {number(fluency['trained_perplexity'])}, "
            f"at most the SFT data's answers' {number(fluency['taught_perplexity'])}",
        ),
        (
            loops,
            f"loops: {share(loops['trained'], prompts)} trained answers loop, at most the start's "
            f"{share(loops['start'], prompts)}",
        ),
        (
            cut_off,
            f"cut off: {share(cut_off['trained'], prompts)} trained answers, at most {cut_off['limit']:.0%}; the "
            f"start's {share(cut_off['start'], prompts)}",
        ),
        (bars["reward_interval"], f"reward run's 95% interval {low:.3f} to {high:.3f}, above 0.5"),
        (
            second,
            f"second judge's win rate {second['win_rate']:.3f}, above 0.5"
            if second["run"]
            else "second judge: none named (ppo.judge or rs.judge: a second reward run)",
        ),
    ]
    if "kl" in bars:
        kl = bars["kl"]
        budget = "no ppo.kl_budget to hold it to" if kl["budget"] is None else f"within ppo.kl_budget {kl['budget']}"
        texts.append((kl, f"KL per response: highest {kl['highest']:.2f} (step {kl['step']}), {budget}"))
    return texts


def outcome_text(outcome: dict) -> str:
    low, high = outcome["win_rate_ci95"]
    wins, losses, ties = outcome["wins_losses_ties"]
    return (
        f"{outcome['win_rate']:.3f} over the start (95% CI {low:.3f} to {high:.3f}; "
        f"{wins} wins, {losses} losses, {ties} ties)"
    )


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def count(fraction: float, total: int) -> int:
    return round(fraction * total)


def share(fraction: float, total: int) -> str:
    return f"{count(fraction, total)} of {total} ({fraction:.1%})"
