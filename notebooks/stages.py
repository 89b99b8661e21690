"""What each Colab notebook does after the shared opening: its title and its own cells, as ("md" | "code", text).

build.py adds the opening (what to do first, the T4 time, parameters, helpers, Drive, install, login) and writes the
files.
Every training cell runs a shipped llama2-7b/*-qlora-t4 recipe; in TINY mode `--set` shrinks it to tiny-llama2.
"""

from __future__ import annotations

import json
from textwrap import dedent


def md(text: str) -> tuple[str, str]:
    return ("md", text)


def py(text: str, **lists: list[str]) -> tuple[str, str]:
    """A code cell; each keyword names a placeholder in `text` that becomes that list of strings, as Python."""
    text = dedent(text)
    for name, values in lists.items():
        [line] = [line for line in text.splitlines() if name in line]
        indent = " " * (len(line) - len(line.lstrip()))
        inline = "[" + ", ".join(json.dumps(value) for value in values) + "]"
        if len(line) - len(name) + len(inline) > 110:
            inline = "[\n" + "".join(f"{indent}    {json.dumps(value)},\n" for value in values) + f"{indent}]"
        text = text.replace(name, inline)
    return ("code", text)


# ------------------------------------------------------------------------------------ sizes for one free T4 session
# What each training cell adds by --set to its shipped recipe, so that every notebook runs in about 90 minutes on a
# free Colab T4 by `posttrain plan`'s time estimate (notebooks/t4_time.py adds them up into each notebook's opening).
# Checkpoints come often, so that a disconnect loses little. Prompt sets are seeded random subsets (max_rows).


def subset(key: str, path: str, rows: int) -> str:
    return f"{key}=[{{path: '{path}', max_rows: {rows}}}]"


T4 = {
    "sft": ["train.max_steps=60", "train.save_steps=20"],
    "reward": ["train.max_steps=40", "train.save_steps=20", subset("data.eval", "Anthropic/hh-rlhf:test", 200)],
    "rs": [subset("data.train", "Anthropic/hh-rlhf:train", 64), "rs.iterations=1"],
    "ppo": [
        subset("data.train", "Anthropic/hh-rlhf:train", 200),
        "ppo.steps=10",
        "ppo.max_new_tokens=128",
        "ppo.save_steps=5",
    ],
    "dpo": [
        "train.max_steps=25",
        "train.save_steps=5",
        subset("data.eval", "HuggingFaceH4/ultrafeedback_binarized:test_prefs", 100),
    ],
    "orpo": [
        "train.max_steps=30",
        "train.save_steps=10",
        subset("data.eval", "HuggingFaceH4/ultrafeedback_binarized:test_prefs", 100),
    ],
    "kto": [
        "train.max_steps=25",
        "train.gradient_accumulation_steps=4",
        "train.save_steps=5",
        subset("data.eval", "trl-lib/kto-mix-14k:test", 100),
    ],
    "grpo": ["train.max_steps=20", "train.save_steps=5"],
}  # gatt and distill fit as shipped
ANSWER_QUESTIONS = ("generate", "answers to the 3 questions", 1, 3, 256)  # for t4_time: a `posttrain generate`


PLAN_MD = md("""
    ### Plan: does it fit a T4?

    `posttrain plan` predicts the recipe's peak GPU memory on a 16 GB T4, with the same `--set` changes as the
    training run, without loading any weights (it reads the model's config), and says whether it fits and with
    how much headroom, or what to change when it does not. Add such a change as one more `--set` in both cells.
""")


def sft_run_needed(notebook: str) -> list[tuple[str, str]]:
    """Cells that find notebook 01's SFT run (on Colab) or train a 2-step stand-in for it (TINY)."""
    return [
        md(f"""
            ## The SFT run

            {notebook} starts from the run folder of notebook 01, `llama2-7b-sft`, which notebook 01 wrote to your
            Google Drive (`MyDrive/posttrain/runs`). In TINY mode a 2-step run on tiny-llama2 stands in.
        """),
        py("""
            SFT_RUN = f"{RUNS}-sft"
            if TINY:  # no run of notebook 01 here: a 2-step SFT run on tiny-llama2 stands in for it
                tiny_sft = [
                    f"model.name={MODEL}",
                    "model.precision=auto",
                    "data.train=builtin:pirate_sft",
                    "data.max_length=192",
                    "train.max_steps=2",
                    "train.gradient_accumulation_steps=1",
                ]
                sh(f"posttrain sft llama2-7b/sft-qlora-t4 {sets(tiny_sft)} --output-dir {SFT_RUN}")
            elif not Path(SFT_RUN, "adapter").is_dir():
                raise FileNotFoundError(f"{SFT_RUN} holds no adapter: run 01_sft.ipynb first, or copy its run back")
            show_folder(SFT_RUN)
        """),
    ]


# ------------------------------------------------------------------------------------------------------------ 01 SFT

SFT = dict(
    methods=("sft",),
    timed=[ANSWER_QUESTIONS, ("run", "llama2-7b/sft-qlora-t4", T4["sft"]), ANSWER_QUESTIONS],
    title="""
        # 1 · Supervised fine-tuning (SFT) of Llama 2 7B

        The first stage of the Llama 2 pipeline: instruction tuning. A pretrained base model only continues text;
        SFT trains it on conversations written by people (here HuggingFaceH4/no_robots, 9.5k of them), so that it
        answers a request given in Llama 2's chat format (`[INST] ... [/INST]`) and stops when the answer is done.
        posttrain trains it as 4-bit QLoRA: the base stays frozen in 4 bits and only small LoRA adapters train.
        The run folder written here is where the next notebooks start: reward model and RLHF (02), DPO (03), chat
        and merge (05). ORPO (04) starts from the base model instead.
    """,
    cells=[
        md("""
            ## Before: the base model's answers

            `posttrain generate` answers each question of `questions.jsonl` in the Llama 2 chat template. The base
            model was never taught that format, so it often rambles, repeats the question or does not stop.
        """),
        py('sh(f"posttrain generate {MODEL} {GENERATE} --output replies/base.jsonl")'),
        md("""
            ## Instruction tuning

            The recipe `llama2-7b/sft-qlora-t4` runs one epoch over no_robots, 16 conversations per optimizer step
            (2 per batch, 8 batches accumulated), with the loss on the assistant turns only: about 10 hours on a T4 by
            the plan's estimate, more than a free session. `--set` changes any recipe key for one run: the cell below
            passes `MODEL` and stops after 60 steps (960 conversations, about 70 minutes), or in TINY mode shrinks the
            recipe. Delete the cell's `else:` branch for the full epoch (on a longer session, or over several: *Run
            all* continues it).
        """),
        PLAN_MD,
        py(
            """
            SFT_RUN = f"{RUNS}-sft"
            SFT = [f"model.name={MODEL}"]
            if TINY:  # the same recipe shrunk to tiny-llama2 on a CPU: built-in data, short rows, 2 steps
                SFT += [
                    "model.precision=auto",
                    "data.train=builtin:pirate_sft",
                    "data.max_length=192",
                    "train.max_steps=2",
                    "train.gradient_accumulation_steps=1",
                    "train.logging_steps=1",
                ]
            else:  # sized for one free T4 session: leave these out for the recipe's full run
                SFT += T4_SETS
            sh(f"posttrain plan llama2-7b/sft-qlora-t4 --gpu t4 {sets(SFT)}")
        """,
            T4_SETS=T4["sft"],
        ),
        md("""
            ### Train

            You should see the data report (format, rows, a token-length histogram, and how many rows were too long
            for `data.max_length` and dropped), then the trainer's log every 10 steps (loss, learning rate), then
            `done: run folder ...`. If Colab disconnects, reconnect and *Run all*: `train` continues the run with
            `--resume` from its last checkpoint (every 20 steps here), and keeps it once it has finished (posttrain
            never overwrites a finished run unless given `--overwrite`).
        """),
        py('train(f"posttrain sft llama2-7b/sft-qlora-t4 {sets(SFT)}", SFT_RUN)'),
        md("""
            ### Loss curve

            `metrics.json` in the run folder holds the trainer's log history: the training loss at each logging step,
            and the loss on the 2% of conversations held out for evaluation, computed at the end. The training loss
            usually drops fast over the first steps, then slowly.
        """),
        py("""
            plot_metrics(metrics(SFT_RUN)["log_history"], [["loss", "eval_loss"], ["learning_rate"]])
            print("eval loss at the end:", metrics(SFT_RUN)["eval"]["eval_loss"])
        """),
        md("""
            ## After: the same questions

            The run folder loads as a model: its base in 4 bits plus the adapter, with the chat template it was
            trained with. The SFT model should answer each question directly and stop.
        """),
        py("""
            sh(f"posttrain generate {SFT_RUN} {GENERATE} --output replies/sft.jsonl")
            compare_replies({"base model": "replies/base.jsonl", "after SFT": "replies/sft.jsonl"})
        """),
        md("""
            ## Where the outputs are

            The run folder holds `adapter/` (the trained LoRA adapter: for Llama 2 7B about 40M parameters, 160 MB in
            fp32; the base model is not copied), `recipe.yaml` (the resolved recipe with library versions),
            `metrics.json`, `checkpoints/` (for `--resume`), `logs/` (TensorBoard) and the tokenizer with its chat
            template. `replies/` holds the generated answers as JSONL.
        """),
        py("""
            show_folder(SFT_RUN)
            show_folder("replies")
        """),
    ],
)


# -------------------------------------------------------------------------------------------- 02 reward, RS and PPO

REWARD_RS_PPO = dict(
    needs="notebook 01 (rejection sampling starts from its SFT run)",
    methods=("reward", "rs", "ppo"),
    timed=[
        ("run", "llama2-7b/reward-qlora-t4", T4["reward"]),
        ("run", "llama2-7b/rs-qlora-t4", T4["rs"]),
        ("run", "llama2-7b/ppo-qlora-t4", T4["ppo"]),
        ("generate", "`eval winrate` (2 models answer, the reward run judges)", 3, 3, 256),
    ],
    title="""
        # 2 · RLHF: a reward model, rejection sampling and PPO

        Llama 2's RLHF, on top of the SFT run of notebook 01:
        1. **Reward model**: the base model with a score head, trained on human comparisons (Anthropic HH: per
           prompt, a chosen and a rejected reply) to score the chosen reply higher.
        2. **Rejection sampling**: sample several answers per prompt, keep the one the reward model scores best,
           fine-tune the policy on the kept answers; repeat.
        3. **PPO**: reinforcement learning against the reward model, with a per-token KL penalty that keeps the
           policy close to where it started.

        Llama 2 applied PPO on top of the rejection-sampling model; so does this notebook, by starting PPO from the
        rejection-sampling run (the shipped PPO recipe starts from the SFT run).
    """,
    cells=[
        *sft_run_needed("This notebook"),
        md("""
            ## 1. Reward model

            The reward model starts from the base model, not from the SFT run (a score head is not a language-model
            head): a LoRA adapter and a one-output score head, trained with TRL's RewardTrainer on
            `-log σ(r_chosen - r_rejected)`. What to look for: the accuracy, the share of held-out pairs (HH test)
            whose chosen reply scores higher. Human preferences are noisy, so it stays well below 100%. The recipe's
            1000 steps of 16 pairs take about 20 hours on a T4 by the plan's estimate; here 40 steps (640 pairs) and
            200 held-out pairs fit the session, so expect an accuracy only a little above one half.
        """),
        PLAN_MD,
        py(
            """
            REWARD_RUN = f"{RUNS}-reward"
            REWARD = [f"model.name={MODEL}"]
            if TINY:
                REWARD += [
                    "model.precision=auto",
                    "data.train=builtin:pirate_prefs",
                    "data.eval=builtin:pirate_prefs_strength",
                    "data.max_length=192",
                    "train.max_steps=2",
                    "train.gradient_accumulation_steps=1",
                    "train.logging_steps=1",
                ]
            else:  # sized for one free T4 session: leave these out for the recipe's full run
                REWARD += T4_SETS
            sh(f"posttrain plan llama2-7b/reward-qlora-t4 --gpu t4 {sets(REWARD)}")
        """,
            T4_SETS=T4["reward"],
        ),
        py('train(f"posttrain reward llama2-7b/reward-qlora-t4 {sets(REWARD)}", REWARD_RUN)'),
        py("""
            plot_metrics(metrics(REWARD_RUN)["log_history"], [["loss", "eval_loss"], ["accuracy", "eval_accuracy"]])
            accuracy = metrics(REWARD_RUN)["reward_accuracy"]
            print(f"accuracy on {accuracy['pairs']} held-out pairs: {accuracy['accuracy']:.3f}")
        """),
        md("""
            ## 2. Rejection sampling

            Each round samples `rs.samples_per_prompt` answers to every prompt (the human turns of HH) with the
            current policy, scores them with the reward run, keeps the best answer per prompt and fine-tunes the
            policy on the kept answers (SFT). What to look for, per round: the mean score of all samples (the
            policy's level), which should rise from round to round, and of the kept ones (what it learns from).
            The prompts come from HH's train split, not from the test split on which the reward run measured its
            accuracy. The recipe samples all 160k of them in each of 3 rounds, days on one T4; here one round
            samples a seeded random 64 of them (`max_rows`), about a quarter of an hour.
        """),
        py(
            """
            RS_RUN = f"{RUNS}-rs"
            RS = [f"model.name={SFT_RUN}", f"rs.reward={REWARD_RUN}"]
            if TINY:
                RS += [
                    "model.precision=auto",
                    "data.train=builtin:pirate_heldout",
                    "data.max_length=192",
                    "rs.iterations=2",
                    "rs.samples_per_prompt=2",
                    "rs.max_new_tokens=8",
                    "rs.keep_cut_off=true",  # a 2-step tiny model's answers never end within 8 tokens
                    "train.max_steps=2",
                    "train.gradient_accumulation_steps=1",
                ]
            else:  # sized for one free T4 session: leave these out for the recipe's full run
                RS += T4_SETS
            sh(f"posttrain plan llama2-7b/rs-qlora-t4 --gpu t4 {sets(RS)}")
        """,
            T4_SETS=T4["rs"],
        ),
        py('train(f"posttrain rs llama2-7b/rs-qlora-t4 {sets(RS)}", RS_RUN)'),
        md("""
            `selected/round-N.jsonl` holds, per prompt, every candidate with its score and the one kept:
        """),
        py("""
            plot_metrics(metrics(RS_RUN)["rounds"], [["mean_score", "best_score"], ["train_loss"]], x="round")
            last_round = len(metrics(RS_RUN)["rounds"])
            first = json.loads(Path(RS_RUN, "selected", f"round-{last_round}.jsonl").read_text().splitlines()[0])
            print("prompt:", first["prompt"][-1]["content"])
            for candidate in first["candidates"]:
                print(f"  score {candidate['score']:+.3f}: {candidate['response'][:300]!r}")
        """),
        md("""
            ## 3. PPO

            One 4-bit base carries four LoRA adapters: the policy (trains; here it starts from the rejection-sampling
            run), the reference (a frozen copy of the starting policy), the value model (trains; starts from the
            reward adapter) and the reward model (frozen). Each step samples answers to a batch of prompts, scores
            them, subtracts a per-token KL penalty to the reference, and updates policy and value with clipped
            losses. What to look for: the score rising while the KL to the reference stays small. A score that
            climbs with a fast-growing KL, or answers that shrink to nothing (the response length), is the policy
            exploiting the reward model's blind spots rather than getting better. The recipe's 200 steps of 8 prompts
            take about 5 hours on a T4 by the plan's estimate; here 10 steps with answers of up to 128 tokens, on
            prompts of HH's train split as for rejection sampling: enough to see the mechanics, not a better model.
        """),
        py(
            """
            PPO_RUN = f"{RUNS}-ppo"
            PPO = [f"model.name={RS_RUN}", f"ppo.reward={REWARD_RUN}"]
            if TINY:
                PPO += [
                    "model.precision=auto",
                    "data.train=builtin:pirate_heldout",
                    "data.max_length=192",
                    "ppo.steps=2",
                    "ppo.batch_size=4",
                    "ppo.mini_batch_size=2",
                    "ppo.max_new_tokens=8",
                ]
            else:  # sized for one free T4 session: leave these out for the recipe's full run
                PPO += T4_SETS
            sh(f"posttrain plan llama2-7b/ppo-qlora-t4 --gpu t4 {sets(PPO)}")
        """,
            T4_SETS=T4["ppo"],
        ),
        py('train(f"posttrain ppo llama2-7b/ppo-qlora-t4 {sets(PPO)}", PPO_RUN)'),
        md("""
            `samples.jsonl` holds every sampled answer with its score; here are the last step's:
        """),
        py("""
            plot_metrics(metrics(PPO_RUN)["steps"], [["score"], ["kl"], ["response_length"]])
            samples = [json.loads(line) for line in Path(PPO_RUN, "samples.jsonl").read_text().splitlines()]
            for sample in samples:
                if sample["step"] == samples[-1]["step"]:
                    print(f"score {sample['score']:+.3f}  {sample['prompt']!r} -> {sample['response'][:300]!r}")
        """),
        md("""
            ## Before and after: PPO against SFT

            `posttrain eval winrate` answers the questions with both models and lets the reward run judge each pair
            (a tie counts half), with a bootstrap 95% interval. Two cautions: the judge is the reward model PPO was
            trained against, so this shows what PPO optimised, not what people prefer; and three questions give a
            very wide interval: use a prompt file of a few hundred for a number worth reading.
        """),
        py("""
            sh(f"posttrain eval winrate {PPO_RUN} {SFT_RUN} {GENERATE} --judge {REWARD_RUN}")
            report = max(Path("evals").glob("winrate-*.json"), key=os.path.getmtime)  # the report just written
            judged = json.loads(report.read_text())["judged"]
            side_by_side(
                [pair["prompt"][-1]["content"] for pair in judged],
                {
                    "SFT (score, reply)": [f"{pair['score_b']:+.2f}  {pair['reply_b']}" for pair in judged],
                    "PPO (score, reply)": [f"{pair['score_a']:+.2f}  {pair['reply_a']}" for pair in judged],
                },
            )
        """),
        md("""
            ## Where the outputs are

            Each run folder holds `adapter/` (the reward run's also keeps its score head), `recipe.yaml`,
            `metrics.json` and `checkpoints/`; the rejection-sampling run adds `selected/`, the PPO run
            `samples.jsonl`. `evals/` holds the win-rate report.
        """),
        py("""
            for run in (REWARD_RUN, RS_RUN, PPO_RUN):
                print(run)
                show_folder(run)
        """),
    ],
)


# ------------------------------------------------------------------------------------------------------------ 03 DPO

DPO = dict(
    needs="notebook 01 (DPO starts from its SFT run)",
    methods=("dpo",),
    timed=[ANSWER_QUESTIONS, ("run", "llama2-7b/dpo-qlora-t4", T4["dpo"]), ANSWER_QUESTIONS],
    title="""
        # 3 · DPO from the SFT run

        The cheaper path to a chat model: Direct Preference Optimisation trains the SFT model directly on
        preference pairs (UltraFeedback: a chosen and a rejected answer per prompt), with no reward model and no
        sampling. Its loss raises the likelihood of the chosen answer relative to the rejected one, both measured
        against a reference model: here a frozen copy of the SFT adapter on the same 4-bit base, so no second model
        is loaded.
    """,
    cells=[
        *sft_run_needed("DPO"),
        md("""
            ## Before: the SFT model's answers

            The same questions are asked again after DPO.
        """),
        py('sh(f"posttrain generate {SFT_RUN} {GENERATE} --output replies/sft.jsonl")'),
        md("""
            ## DPO

            The recipe `llama2-7b/dpo-qlora-t4` continues training the SFT run's adapter (`model.name` is the SFT run
            folder) with β = 0.1, for 500 steps of 16 pairs, about a day on a T4; here 25 steps (400 pairs), and the
            held-out loss on 100 test pairs.
        """),
        PLAN_MD,
        py(
            """
            DPO_RUN = f"{RUNS}-dpo"
            DPO = [f"model.name={SFT_RUN}"]
            if TINY:
                DPO += [
                    "model.precision=auto",
                    "data.train=builtin:pirate_prefs",
                    "data.eval=builtin:pirate_prefs_strength",
                    "data.max_length=192",
                    "train.max_steps=2",
                    "train.gradient_accumulation_steps=1",
                    "train.logging_steps=1",
                ]
            else:  # sized for one free T4 session: leave these out for the recipe's full run
                DPO += T4_SETS
            sh(f"posttrain plan llama2-7b/dpo-qlora-t4 --gpu t4 {sets(DPO)}")
        """,
            T4_SETS=T4["dpo"],
        ),
        py('train(f"posttrain dpo llama2-7b/dpo-qlora-t4 {sets(DPO)}", DPO_RUN)'),
        md("""
            ### Curves

            At the first step the policy equals the reference, so the loss is ln 2 ≈ 0.693 and the implicit rewards
            (β times the policy's log-likelihood ratio to the reference) are 0. Then the loss should fall, the margin
            between the chosen and the rejected reward grow, and the reward accuracy (pairs whose chosen answer has
            the larger reward) rise above one half.
        """),
        py("""
            plot_metrics(
                metrics(DPO_RUN)["log_history"],
                [["loss", "eval_loss"], ["rewards/margins"], ["rewards/accuracies"]],
            )
        """),
        md("""
            ## After: the same questions
        """),
        py("""
            sh(f"posttrain generate {DPO_RUN} {GENERATE} --output replies/dpo.jsonl")
            compare_replies({"SFT": "replies/sft.jsonl", "after DPO": "replies/dpo.jsonl"})
        """),
        md("""
            ## Where the outputs are

            The DPO run folder holds `adapter/` (the SFT adapter, trained further), `recipe.yaml`, `metrics.json`
            (with the reference model it used), `checkpoints/` and `logs/`.
        """),
        py("show_folder(DPO_RUN)"),
    ],
)


# ----------------------------------------------------------------------------------------------------------- 04 ORPO

ORPO = dict(
    methods=("orpo",),
    timed=[ANSWER_QUESTIONS, ("run", "llama2-7b/orpo-qlora-t4", T4["orpo"]), ANSWER_QUESTIONS],
    title="""
        # 4 · ORPO from the base model

        ORPO (odds-ratio preference optimisation) does instruction tuning and preference alignment in one stage,
        straight from the base model: its loss is the SFT loss on the chosen answer plus a term, weighted by β, that
        raises the odds of the chosen answer over the rejected one. No SFT run, no reference model and no reward
        model: the cheapest path. It trains here on UltraFeedback pairs with TRL's ORPOTrainer.
    """,
    cells=[
        md("""
            ## Before: the base model's answers

            The base model was never taught the chat format; the same questions are asked again after ORPO.
        """),
        py('sh(f"posttrain generate {MODEL} {GENERATE} --output replies/base.jsonl")'),
        md("""
            ## ORPO

            The recipe `llama2-7b/orpo-qlora-t4` trains a new LoRA adapter on the 4-bit base with β = 0.1, for 1000
            steps of 16 pairs, more than a day on a T4; here 30 steps (480 pairs) and 100 held-out test pairs.
        """),
        PLAN_MD,
        py(
            """
            ORPO_RUN = f"{RUNS}-orpo"
            ORPO = [f"model.name={MODEL}"]
            if TINY:
                ORPO += [
                    "model.precision=auto",
                    "data.train=builtin:pirate_prefs",
                    "data.eval=builtin:pirate_prefs_strength",
                    "data.max_length=192",
                    "train.max_steps=2",
                    "train.gradient_accumulation_steps=1",
                    "train.logging_steps=1",
                ]
            else:  # sized for one free T4 session: leave these out for the recipe's full run
                ORPO += T4_SETS
            sh(f"posttrain plan llama2-7b/orpo-qlora-t4 --gpu t4 {sets(ORPO)}")
        """,
            T4_SETS=T4["orpo"],
        ),
        py('train(f"posttrain orpo llama2-7b/orpo-qlora-t4 {sets(ORPO)}", ORPO_RUN)'),
        md("""
            ### Curves

            `nll_loss` is the SFT part of the loss: it should fall as in SFT. `log_odds_ratio` (the log-sigmoid of
            the chosen-over-rejected log odds) should rise towards 0, and the reward accuracy (pairs whose chosen
            answer is the likelier) above one half.
        """),
        py("""
            plot_metrics(
                metrics(ORPO_RUN)["log_history"],
                [["loss", "nll_loss", "eval_loss"], ["log_odds_ratio"], ["rewards/accuracies"]],
            )
        """),
        md("""
            ## After: the same questions
        """),
        py("""
            sh(f"posttrain generate {ORPO_RUN} {GENERATE} --output replies/orpo.jsonl")
            compare_replies({"base model": "replies/base.jsonl", "after ORPO": "replies/orpo.jsonl"})
        """),
        md("""
            ## Where the outputs are

            The ORPO run folder holds `adapter/` (the LoRA adapter), `recipe.yaml`, `metrics.json`, `checkpoints/`
            and `logs/`. It loads as a model like an SFT run: chat with it or merge it in notebook 05.
        """),
        py("show_folder(ORPO_RUN)"),
    ],
)


# ------------------------------------------------------------------------------------------------ 05 chat and merge

CHAT_MERGE = dict(
    needs="notebook 01 (this notebook uses its SFT run; set `RUN` for a run of another notebook)",
    timed=[
        ANSWER_QUESTIONS,
        ("load", "the chat (loading; your chat's own time comes on top)", 1),
        ("load", "`merge` (reloading the base in 16 bits, checking, writing 13.5 GB)", 3),
        ("load", "loading the merged model with transformers", 1),
    ],
    title="""
        # 5 · Use the result: generate, chat, merge

        Any run folder that holds a language model (SFT, DPO, ORPO, rejection sampling or PPO; not a reward run)
        loads as a model: its base in 4 bits plus its adapter, with the chat template it was trained with. This
        notebook answers a file of questions with it, chats with it, and merges the adapter into a plain
        transformers model folder that loads without posttrain.
    """,
    extra="[serve]",
    cells=[
        *sft_run_needed("This notebook"),
        py('RUN = SFT_RUN  # or f"{RUNS}-dpo", f"{RUNS}-orpo", f"{RUNS}-rs", f"{RUNS}-ppo"'),
        md("""
            ## Generate

            `posttrain generate` answers every prompt of a file (any data format; the prompt part is taken) in
            batches and writes one JSONL row per prompt. It is greedy by default; `--do-sample --temperature 0.7
            --top-p 0.9` samples instead. A rerun skips the prompts already answered.
        """),
        py("""
            sh(f"posttrain generate {RUN} {GENERATE} --output replies/run.jsonl")
            for question, reply in replies("replies/run.jsonl").items():
                print(f"Q: {question}\\nA: {reply}\\n")
        """),
        md("""
            ## Chat

            In a terminal this is `posttrain chat RUN`. Here the same chat loop runs in the notebook and reads your
            messages from an input box: type a message and press Enter, and the reply streams below. `/system TEXT`
            sets a system prompt, `/reset` clears the history and `/exit` ends the chat (the cell runs until then).
            In TINY mode a scripted conversation stands in for the keyboard.
        """),
        py("""
            import gc

            import torch

            from posttrain.cli.support import quiet_libraries
            from posttrain.inference.chat import run_chat
            from posttrain.inference.generation import GenerationSettings

            quiet_libraries()
            settings = GenerationSettings(
                max_new_tokens=24 if TINY else 512,
                do_sample=True,
                temperature=0.7,
                top_p=0.9,
            )
            if TINY:  # no keyboard in the test suite: a scripted conversation
                script = iter(["Hi! Who are you?", "/system You are a pirate.", "Where is Japan?", "/exit"])

                def read(prompt: str) -> str:
                    line = next(script)
                    print(prompt + line)
                    return line
            else:
                read = input
            run_chat(RUN, None, settings, "auto", read=read, write=lambda text: print(text, end="", flush=True))
            gc.collect()
            torch.cuda.empty_cache()  # the chat model's GPU memory goes back before the merge
        """),
        md("""
            ### A chat page (optional, Colab)

            `posttrain serve RUN` serves a chat page (gradio, from the `serve` extra the install cell includes) on
            port 7860 of the machine it runs on; it has no public share link of its own. On Colab, the next cell
            (off by default) starts it in the background and opens the page through Colab's port proxy in a new
            browser tab. `server.terminate()` stops it and frees its GPU memory: do that before the merge.
        """),
        py("""
            SERVE = False  # True (Colab): start `posttrain serve` in the background and open its page
            if SERVE and not TINY:
                import socket
                import time

                from google.colab import output

                def page_is_up() -> bool:  # once the model has loaded
                    with socket.socket() as probe:
                        return probe.connect_ex(("127.0.0.1", 7860)) == 0

                server = subprocess.Popen(["posttrain", "serve", RUN, "--port", "7860"])
                while not page_is_up():
                    if server.poll() is not None:
                        raise RuntimeError("posttrain serve stopped: run it with sh() to see its output")
                    time.sleep(5)
                output.serve_kernel_port_as_window(7860)
        """),
        md("""
            ## Merge

            `posttrain merge` reloads the base in 16 bits (not the 4-bit base the adapter trained on), applies the
            adapter and folds it into the weights, checks that the merged model's logits match the adapter model's,
            and only then writes a plain transformers folder: safetensors, tokenizer, chat template and generation
            config. For Llama 2 7B that is about 13.5 GB in fp16 (6.7 billion parameters × 2 bytes), held on the GPU
            during the merge. It writes only into a new folder, so the cell skips a merge already done.
        """),
        py("""
            MERGED = f"models/{Path(RUN).name}-merged"
            if not Path(MERGED, "config.json").exists():
                sh(f"posttrain merge {RUN} --output {MERGED}")
            show_folder(MERGED)
        """),
        md("""
            ### Load it with transformers alone

            No posttrain and no peft: `AutoModelForCausalLM.from_pretrained` loads the folder (in fp16, 13.5 GB of
            the T4's memory for 7B), and its tokenizer carries the chat template. Its greedy answer may differ in places
            from the run's answer to the same question above: the run computes with the 4-bit base, this model with
            16-bit weights.
        """),
        py("""
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(MERGED)
            model = AutoModelForCausalLM.from_pretrained(MERGED, dtype="auto", device_map="auto")
            chat = [{"role": "user", "content": QUESTIONS[0]}]
            prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            print(repr(prompt))  # the chat template at work (Llama 2: [INST] ... [/INST])
            inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(model.device)
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=24 if TINY else 256, do_sample=False)
            reply = output[0, inputs["input_ids"].shape[1] :]
            print(tokenizer.decode(reply, skip_special_tokens=True))
        """),
        md("""
            ## Where the outputs are

            `replies/run.jsonl` holds the generated answers, and `models/` the merged model: copy that folder
            anywhere transformers runs, or push it to the Hugging Face hub with `model.push_to_hub(...)` (mind the
            Llama 2 licence).
        """),
        py("""
            show_folder("replies")
            show_folder("models")
        """),
    ],
)


# ------------------------------------------------------------------------------------------------------ 06 KTO, GRPO

KTO_GRPO = dict(
    needs="notebooks 01 (both stages start from its SFT run) and 02 (its reward run scores GRPO's answers)",
    methods=("kto", "grpo"),
    timed=[
        ("run", "llama2-7b/kto-qlora-t4", T4["kto"]),
        ("run", "llama2-7b/grpo-qlora-t4", T4["grpo"]),
        ("generate", "answers of SFT, KTO and GRPO to the 3 questions", 3, 3, 256),
    ],
    title="""
        # 6 · KTO and GRPO from the SFT run

        Two more ways to improve the SFT model. **KTO** learns from unpaired feedback: single answers marked good
        or bad, like the thumbs-up/down logs of a chat product (here trl-lib/kto-mix-14k), with a frozen copy of the
        SFT adapter as its reference. **GRPO** is online RL without a value network: it samples several answers to
        each prompt, scores them with rewards (here the reward run of notebook 02 plus a length check; any function
        that checks an answer can be one), and pushes up the answers that beat their group's mean.
    """,
    cells=[
        *sft_run_needed("This notebook"),
        md("""
            ## KTO

            `posttrain data inspect` reports how many answers are desirable and undesirable, and their ratio: the KTO
            paper keeps `desirable_weight × desirable / (undesirable_weight × undesirable)` between 1 and 4/3, and
            the plan printed before training names the weight to set when the data fall outside.
        """),
        py("""
            KTO_DATA = "builtin:pirate_feedback" if TINY else "trl-lib/kto-mix-14k:train"
            sh(f"posttrain data inspect {KTO_DATA} --model {MODEL} --chat-template llama2 --max-length 1024")
        """),
        PLAN_MD,
        py(
            """
            KTO_RUN = f"{RUNS}-kto"
            KTO = [f"model.name={SFT_RUN}"]
            if TINY:
                KTO += [
                    "model.precision=auto",
                    f"data.train={KTO_DATA}",
                    "data.eval=null",
                    "data.eval_fraction=0.1",
                    "data.max_length=192",
                    "train.max_steps=2",
                    "train.gradient_accumulation_steps=1",
                    "train.logging_steps=1",
                ]
            else:  # sized for one free T4 session: leave these out for the recipe's full run
                KTO += T4_SETS
            sh(f"posttrain plan llama2-7b/kto-qlora-t4 --gpu t4 {sets(KTO)}")
        """,
            T4_SETS=T4["kto"],
        ),
        py('train(f"posttrain kto llama2-7b/kto-qlora-t4 {sets(KTO)}", KTO_RUN)'),
        md("""
            ### Curves

            At the first step the policy equals the reference, so the rewards (β times the log-likelihood ratio to
            the reference) are 0 and the loss is 0.5. Then desirable answers' rewards should rise above the
            undesirable ones', while `kl` (the batch's estimate of the KL to the reference) stays small.
        """),
        py("""
            plot_metrics(
                metrics(KTO_RUN)["log_history"],
                [["loss", "eval_loss"], ["rewards/chosen", "rewards/rejected"], ["kl"]],
            )
        """),
        md("""
            ## GRPO

            GRPO needs rewards. The recipe `llama2-7b/grpo-qlora-t4` scores each answer with the reward run of
            notebook 02 (its adapter and score head go on the policy's own 4-bit base, so no second model is
            loaded) plus `max_words: 200`. Notebook 02 wrote the reward run, `llama2-7b-reward`, to your Google
            Drive; in TINY mode a 2-step reward run stands in.
        """),
        py("""
            REWARD_RUN = f"{RUNS}-reward"
            if TINY:  # no run of notebook 02 here: a 2-step reward run on tiny-llama2 stands in for it
                tiny_reward = [
                    f"model.name={MODEL}",
                    "model.precision=auto",
                    "data.train=builtin:pirate_prefs",
                    "data.eval=null",
                    "data.max_length=192",
                    "train.max_steps=2",
                    "train.gradient_accumulation_steps=1",
                ]
                sh(f"posttrain reward llama2-7b/reward-qlora-t4 {sets(tiny_reward)} --output-dir {REWARD_RUN}")
            elif not Path(REWARD_RUN, "adapter").is_dir():
                raise FileNotFoundError(f"{REWARD_RUN} holds no adapter: run 02_reward_rs_ppo.ipynb first")
        """),
        py(
            """
            GRPO_RUN = f"{RUNS}-grpo"
            GRPO = [f"model.name={SFT_RUN}", f"grpo.rewards=[{{run: {REWARD_RUN}}}, {{max_words: 200, weight: 0.5}}]"]
            if TINY:
                GRPO += [
                    "model.precision=auto",
                    "data.train=builtin:pirate_prompts",
                    "data.max_length=96",
                    "train.max_completion_length=16",
                    "train.max_steps=2",
                    "train.gradient_accumulation_steps=1",
                ]
            else:  # sized for one free T4 session: leave these out for the recipe's full run
                GRPO += T4_SETS
            sh(f"posttrain plan llama2-7b/grpo-qlora-t4 --gpu t4 {sets(GRPO)}")
        """,
            T4_SETS=T4["grpo"],
        ),
        py('train(f"posttrain grpo llama2-7b/grpo-qlora-t4 {sets(GRPO)}", GRPO_RUN)'),
        md("""
            ### Curves

            `reward` is the weighted sum of the rewards, averaged over the step's answers, and `rewards/NAME/mean`
            each reward alone. What to look for: the reward rising, and `completions/mean_length` not collapsing (a
            length reward the policy games by saying nothing). `frac_reward_zero_std` is the share of prompts whose
            answers all scored the same: they teach nothing, so a value near 1 means the rewards are too coarse.
        """),
        py("""
            plot_metrics(
                metrics(GRPO_RUN)["log_history"],
                [["reward"], ["completions/mean_length"], ["frac_reward_zero_std"]],
            )
        """),
        md("""
            ## After: the same questions
        """),
        py("""
            sh(f"posttrain generate {SFT_RUN} {GENERATE} --output replies/sft.jsonl")
            sh(f"posttrain generate {KTO_RUN} {GENERATE} --output replies/kto.jsonl")
            sh(f"posttrain generate {GRPO_RUN} {GENERATE} --output replies/grpo.jsonl")
            compare_replies({"SFT": "replies/sft.jsonl", "KTO": "replies/kto.jsonl", "GRPO": "replies/grpo.jsonl"})
        """),
        md("""
            ## Where the outputs are

            Each run folder holds `adapter/` (the SFT adapter, trained further), `recipe.yaml`, `metrics.json`,
            `checkpoints/` and `logs/`; they load as models like an SFT run (chat with them or merge them in 05).
        """),
        py("""
            for run in (KTO_RUN, GRPO_RUN):
                show_folder(run)
        """),
    ],
)


# 07 lives in its own module; imported here, after md, py, PLAN_MD and sft_run_needed that it takes from this one.
from stages_gatt_distill import GATT_DISTILL  # noqa: E402

NOTEBOOKS = {
    "01_sft.ipynb": SFT,
    "02_reward_rs_ppo.ipynb": REWARD_RS_PPO,
    "03_dpo.ipynb": DPO,
    "04_orpo.ipynb": ORPO,
    "05_chat_merge.ipynb": CHAT_MERGE,
    "06_kto_grpo.ipynb": KTO_GRPO,
    "07_gatt_distill.ipynb": GATT_DISTILL,
}
