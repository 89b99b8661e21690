"""Notebook 07: Ghost Attention and safety context distillation, in its own module so that stages.py stays readable.

stages.py imports this module at its end, once the cell helpers this module takes from it are defined.
"""

from __future__ import annotations

from stages import PLAN_MD, T4, md, py, sft_run_needed

GATT_DISTILL = dict(
    needs=(
        "notebook 01 (both stages start from its SFT run) and notebook 02 (its reward run scores their answers; "
        "without it, this notebook trains one, about 50 minutes more)"
    ),
    methods=("gatt", "distill"),
    timed=[
        ("generate", "`eval gatt` before and after (32 dialogues of 4 turns x 64 tokens)", 2, 32, 4 * 64),
        ("run", "llama2-7b/gatt-qlora-t4", []),
        ("run", "llama2-7b/distill-qlora-t4", []),
    ],
    title="""
        # 7 · Ghost Attention and safety context distillation

        Two Llama 2 stages in which the model learns from its own answers, sampled with extra context that the
        training example then leaves out:
        - **Ghost Attention (GAtt)**, Llama 2 §3.3. An instruction given at the start of a chat ("Always reply in
          French", "Stay in character as Napoleon") is often forgotten a few turns later. GAtt samples dialogues
          with the instruction repeated in every user turn, then trains on them with the instruction shown only
          once, at the start: the model learns to keep it by itself.
        - **Safety context distillation**, Llama 2 §4.2.4. The model answers risky prompts twice: as they are, and
          behind a safety preprompt that says how a careful answer is shaped. Where a reward model scores the
          preprompted answer higher, the model is fine-tuned to give it to the plain prompt, without the preprompt.
    """,
    cells=[
        *sft_run_needed("This notebook"),
        md("""
            ## The reward run

            Both stages score sampled answers with notebook 02's reward run, `runs/llama2-7b-reward`: GAtt keeps the
            better of 2 last replies per dialogue, distillation keeps the preprompted answer where it scores higher.
            Notebook 02 wrote it to your Google Drive; when it is missing, the next cell trains it as notebook 02
            does, which adds about 50 minutes to this notebook. In TINY mode a 2-step reward run on tiny-llama2
            stands in.
        """),
        py(
            """
            REWARD_RUN = f"{RUNS}-reward"
            REWARD = [f"model.name={MODEL}"]
            if TINY:
                REWARD += [
                    "model.precision=auto",
                    "data.train=builtin:pirate_prefs",
                    "data.eval=null",
                    "data.max_length=192",
                    "train.max_steps=2",
                    "train.gradient_accumulation_steps=1",
                ]
            else:  # notebook 02's size for one free T4 session
                REWARD += T4_SETS
            train(f"posttrain reward llama2-7b/reward-qlora-t4 {sets(REWARD)}", REWARD_RUN)  # kept when it has finished
            show_folder(REWARD_RUN)
        """,
            T4_SETS=T4["reward"],
        ),
        md("""
            ## 1. Ghost Attention

            ### Before: does the SFT model keep an instruction?

            `posttrain eval gatt` plays dialogues (the built-in ones on everyday topics, 4 user turns each) with an
            instruction a program can check: reply in French, end every reply with "Fair winds!", say "Arr" in every
            reply, begin every reply with "Answer:". The instruction is in the system message of the first turn
            only. The report gives, per turn, the share of replies that still comply, for each instruction and over
            all. What to look for: a share that drops after the first turn or two, as the instruction drifts out of
            the model's attention. Each report is written once; the cell skips a report that already exists.
        """),
        py('''
            EVAL_GATT = "--turns 3 --dialogues 2 --max-new-tokens 8" if TINY else "--turns 4 --dialogues 8"


            def eval_gatt(model: str, report: str) -> dict:
                """posttrain eval gatt's report on `model`, written to `report` unless it is already there."""
                if Path(report).exists():
                    print(f"{report} exists: kept (delete it to evaluate again)")
                else:
                    sh(f"posttrain eval gatt {model} {EVAL_GATT} --output {report}")
                return json.loads(Path(report).read_text())


            before = eval_gatt(SFT_RUN, "evals/gatt-sft.json")
        '''),
        md("""
            ### Build the dialogues and train

            The recipe `llama2-7b/gatt-qlora-t4` gives each built-in dialogue an instruction drawn from three
            families (a hobby, a language, a public figure to play, or two of them at once), long ("Always reply in
            Spanish, whatever language I write in.") or short ("Language: Spanish."). The SFT model answers the
            dialogue turn by turn with the instruction added to every user turn; at the last turn it samples 2
            replies and the reward run keeps the better one. The training example shows the instruction once, in
            the system message, and puts the loss on the last reply only: the earlier replies were written in a
            context the example no longer shows. Llama 2 applied GAtt after RLHF: to do the same, set `model.name`
            to notebook 02's rejection-sampling run, `f"{RUNS}-rs"`.
        """),
        PLAN_MD,
        py("""
            GATT_RUN = f"{RUNS}-gatt"
            GATT = [f"model.name={SFT_RUN}", f"gatt.reward={REWARD_RUN}"]
            if TINY:
                GATT += [
                    "model.precision=auto",
                    "data.max_length=192",
                    "gatt.max_turns=2",
                    "gatt.max_new_tokens=8",
                    "gatt.batch_size=8",
                    # a 2-step tiny model's replies never end within 8 tokens: score and keep them all the same
                    "gatt.truncated=append_eos",
                    "gatt.keep_cut_off=true",
                    "train.max_steps=2",
                    "train.gradient_accumulation_steps=1",
                    "train.logging_steps=1",
                ]
            sh(f"posttrain plan llama2-7b/gatt-qlora-t4 --gpu t4 {sets(GATT)}")
        """),
        py('train(f"posttrain gatt llama2-7b/gatt-qlora-t4 {sets(GATT)}", GATT_RUN)'),
        md("""
            ### The built dialogues

            `gatt/dialogues.jsonl` holds every built dialogue: `sampled_with`, the context the replies were sampled
            in (the instruction on every user turn), and `messages`, what the model is trained on (the instruction
            once). A dialogue is left out (`kept: false`) when none of its last replies ended within
            `gatt.max_new_tokens`: training on it would teach the model to stop mid-sentence. What to look for:
            replies that actually follow the instruction; the model can only learn to keep what it already does
            when reminded.
        """),
        py("""
            print(json.dumps(metrics(GATT_RUN)["gatt"], indent=1))
            built = [json.loads(line) for line in Path(GATT_RUN, "gatt", "dialogues.jsonl").read_text().splitlines()]
            for record in built[:2]:
                print(f"\\ninstruction: {record['instruction']}  (kept: {record['kept']})")
                for message in record["messages"]:
                    print(f"  {message['role']:>9}: {message['content'][:300]!r}")
                scores = ", ".join(f"{candidate['score']:+.3f}" for candidate in record["candidates"])
                print(f"  the last reply's candidates scored {scores}")
        """),
        md("""
            ### After: compliance by turn, before and after GAtt

            The same evaluation on the GAtt run. What to look for: the GAtt curve staying higher than the SFT curve
            on the later turns. The evaluation's instructions are not the ones GAtt trained on (only the language one
            is common to both), so a gain there is the model keeping instructions in general, not a memorised list.
            With 8 dialogues per instruction, a point of one instruction is a share of 8 replies (32 over all): a
            difference of a reply or two is noise.
        """),
        py("""
            import matplotlib.pyplot as plt

            after = eval_gatt(GATT_RUN, "evals/gatt-gatt.json")
            turns = range(1, len(after["by_turn"]) + 1)
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
            for report, name, style in ((before, "SFT", ":"), (after, "GAtt", "-")):
                axes[0].plot(turns, report["by_turn"], style, marker="o", color="black", label=name)
                for color, (instruction, shares) in enumerate(report["by_instruction"].items()):
                    axes[1].plot(turns, shares, style, marker=".", color=f"C{color}", label=f"{name}: {instruction}")
            for ax, title in zip(axes, ("all instructions", "per instruction"), strict=True):
                ax.set(xlabel="turn", ylabel="replies complying", ylim=(-0.02, 1.02), title=title)
                ax.set_xticks(list(turns))
            axes[0].legend()
            axes[1].legend(fontsize=7, ncol=2)
            fig.tight_layout()
            plt.show()
        """),
        md("""
            ## 2. Safety context distillation

            The recipe `llama2-7b/distill-qlora-t4` reads the built-in safety prompts (24 risky requests: 6 each of
            the risk categories criminal, harmful and unqualified_advice, and 6 without one; your own file can carry
            a `risk_category` column). Each prompt is answered twice: as it is, and behind a safety preprompt in the
            system message, the one of its risk category, which carries an answer template ("first say briefly that
            you will not help with anything illegal; then ..."), or a generic one. The reward run scores both as
            answers to the prompt WITHOUT the preprompt, the preprompted answer is kept where it scores higher, and
            SFT then trains prompt → kept answer.

            **Which reward model.** Llama 2 scored these answers with its separate *safety* reward model, trained on
            safety preferences. The shipped recipe names notebook 02's reward run, a *helpfulness* model trained on
            Anthropic HH, unless you train a safety one: run notebook 02's reward command with `--set
            data.train=YOUR_SAFETY_PAIRS` (any preference format) and `--output-dir runs/llama2-7b-safety-reward`,
            and set `SAFETY_REWARD_RUN` below to it. A helpfulness model may prefer the plain answer even when the
            careful one is what you want, so read the kept answers below, not only the scores.
        """),
        PLAN_MD,
        py("""
            SAFETY_REWARD_RUN = REWARD_RUN  # your safety reward run, if you trained one
            DISTILL_RUN = f"{RUNS}-distill"
            DISTILL = [f"model.name={SFT_RUN}", f"distill.reward={SAFETY_REWARD_RUN}"]
            if TINY:
                DISTILL += [
                    "model.precision=auto",
                    "data.max_length=256",
                    "distill.max_new_tokens=8",
                    "distill.batch_size=8",
                    # a 2-step tiny model's answers never end within 8 tokens: score and keep them all the same
                    "distill.truncated=append_eos",
                    "distill.keep_cut_off=true",
                    "train.max_steps=2",
                    "train.gradient_accumulation_steps=1",
                    "train.logging_steps=1",
                ]
            sh(f"posttrain plan llama2-7b/distill-qlora-t4 --gpu t4 {sets(DISTILL)}")
        """),
        py('train(f"posttrain distill llama2-7b/distill-qlora-t4 {sets(DISTILL)}", DISTILL_RUN)'),
        md("""
            ### Kept answers, per risk category

            From `metrics.json`, per risk category: the share of prompts whose preprompted answer was kept, the
            mean safety score (the reward run's) of the original and of the preprompted answers over all prompts,
            then over the prompts where the preprompted answer was kept: the original answer's and the kept one's.
            There the kept one scores higher by construction; what to look for is how often the preprompt helped
            (the kept fraction) and by how much. A category with few kept answers is one where the preprompt did
            not help, or where the reward model does not reward what it asks for. `distill/selected.jsonl` holds
            both answers to every prompt with their scores; one prompt of each category follows the table.
        """),
        py("""
            import pandas as pd

            distilled = metrics(DISTILL_RUN)["distill"]
            table = pd.DataFrame.from_dict({**distilled["by_category"], "all": distilled}, orient="index")
            table["original_where_kept"] = table["mean_kept_score"] - table["mean_gain_where_kept"]
            columns = {
                "prompts": "prompts",
                "kept_fraction": "kept",
                "mean_original_score": "original",
                "mean_preprompted_score": "preprompted",
                "original_where_kept": "original where kept",
                "mean_kept_score": "kept answer",
            }
            display(table[list(columns)].astype(float).astype({"prompts": int}).round(3).rename(columns=columns))

            path = Path(DISTILL_RUN, "distill", "selected.jsonl")
            selected = [json.loads(line) for line in path.read_text().splitlines()]
            shown = {}
            for record in sorted(selected, key=lambda record: not record["kept"]):  # a kept one where there is one
                shown.setdefault(record["risk_category"] or "none", record)
            for category, record in shown.items():
                print(f"\\n[{category}] {record['prompt'][-1]['content']}  (preprompted answer kept: {record['kept']})")
                for answer in ("original", "preprompted"):
                    print(f"  {answer:>11} {record[answer]['score']:+.3f}: {record[answer]['response'][:300]!r}")
        """),
        md("""
            ## Where the outputs are

            Each run folder holds `adapter/` (the SFT adapter, trained further), `recipe.yaml`, `metrics.json`,
            `checkpoints/` and `logs/`, and the data it built before training: `gatt/dialogues.jsonl` or
            `distill/selected.jsonl` (`--resume` keeps it). They load as models like an SFT run: chat with them or
            merge them in notebook 05. `evals/` holds the two `eval gatt` reports, each with a PNG plot beside it.
        """),
        py("""
            for run in (GATT_RUN, DISTILL_RUN):
                print(run)
                show_folder(run)
            print("evals")
            show_folder("evals")
        """),
    ],
)
