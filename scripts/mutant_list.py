"""The mutants of scripts/mutants.py: plausible bugs in posttrain's core invariants, as text replacements.

MODULES maps each mutated module to the fast tests that guard it (a mutant may name its own). A mutant marked
`equivalent` is one no test can tell from the original; the reason says why. docs/testing.md lists them all.
"""

TOK = "tests/test_tokenizer.py"
MATH = "tests/test_ppo_math.py"
SCORING = "tests/test_rl_scoring.py"
T = "tests/"

PRECISION_TESTS = ("precision_choice", "cannot_honour", "trainer_flags", "put_back_to_fp32")
MODULES = {
    "templates": [TOK],
    "padding": [T + "test_batching.py", "-k", "collator or meter or estimate"],
    "ppo_math": [MATH],
    "sampling": [SCORING, "-k", "each_row or each_response or only_a_cut_off"],
    "precision": [
        T + "test_nonfinite.py",
        T + "test_precision.py",
        "-k",
        " or ".join(("trainable_weight",) + PRECISION_TESTS),
    ],
    "locks": [T + "test_locks.py", T + "test_run_safety.py::test_a_lock_dies_with_its_holder_even_on_kill_9"],
    "cli_train": [T + "test_methods.py"],
    "bradley_terry": [
        T + "test_arena.py",
        "-k",
        "bradley or identical or ties or undefeated or interval_is or bootstrap",
    ],
    "checkpoints": [T + "test_checkpoints.py", T + "test_ppo.py::test_resume_reproduces_the_uninterrupted_run"],
}

CHATML = "posttrain/models/chat_templates/chatml.jinja"
LLAMA2 = "posttrain/models/chat_templates/llama2.jinja"
TEMPLATES = "posttrain/models/templates.py"
PADDING = "posttrain/data/padding.py"
PPO_MATH = "posttrain/rl/ppo_math.py"
SAMPLING = "posttrain/rl/sampling.py"
PRECISION = "posttrain/precision.py"
LOCKS = "posttrain/runs/locks.py"
CLI_TRAIN = "posttrain/cli/train.py"
BT = "posttrain/evaluation/bradley_terry.py"
RUNS = "posttrain/runs/__init__.py"
PPO_TRAINER = "posttrain/rl/ppo_trainer.py"


def m(module: str, file: str, name: str, old: str, new: str, **extra) -> dict:
    return {"module": module, "file": file, "name": name, "old": old, "new": new} | extra


GEN = "{%- generation -%}"
END = "{%- endgeneration -%}"
MUTANTS = [
    # ---------------------------------------------------------------- chat templates and assistant masks
    m(
        "templates",
        CHATML,
        "chatml: <|im_end|> outside {% generation %} (never learns to stop)",
        f"{GEN}{{{{- reply.text + '<|im_end|>' -}}}}{END}",
        f"{GEN}{{{{- reply.text -}}}}{END}{{{{- '<|im_end|>' -}}}}",
    ),
    m(
        "templates",
        CHATML,
        "chatml: the newline after <|im_end|> trained as part of the answer",
        f"{END}\n        {{{{- '\\n' -}}}}",
        f"{{{{- '\\n' -}}}}{END}",
    ),
    m(
        "templates",
        CHATML,
        "chatml: a system turn rendered as a user turn",
        "'<|im_start|>' + message['role'] + '\\n'",
        "'<|im_start|>user\\n'",
    ),
    m(
        "templates",
        CHATML,
        "chatml: no assistant header when a reply is asked for",
        "{%- if add_generation_prompt -%}",
        "{%- if false -%}",
    ),
    m(
        "templates",
        LLAMA2,
        "llama2: </s> outside {% generation %}",
        f"{GEN}{{{{- ' ' + reply.text + ' ' + eos_token -}}}}{END}",
        f"{GEN}{{{{- ' ' + reply.text + ' ' -}}}}{END}{{{{- eos_token -}}}}",
    ),
    m("templates", LLAMA2, "llama2: the system prompt dropped", "loop.first and system", "loop.last and system"),
    m(
        "templates",
        LLAMA2,
        "llama2: one <s> for the whole chat instead of one per turn",
        "{{- bos_token + '[INST] ' + content",
        "{{- (bos_token if loop.first else '') + '[INST] ' + content",
    ),
    m(
        "templates",
        LLAMA2,
        "llama2: turns out of order accepted",
        "{{- raise_exception('Llama 2 chats alternate user (or tool) and assistant turns, after an optional system "
        "message.') -}}",
        "",
    ),
    m(
        "templates",
        TEMPLATES,
        "chatml: EOS left at the tokenizer's (generation never stops at a turn's end)",
        'tokenizer.eos_token = "<|im_end|>"',
        "tokenizer.eos_token = tokenizer.eos_token",
    ),
    m(
        "templates",
        TEMPLATES,
        "pad token may be EOS (a collator masking pad ids would mask EOS labels)",
        "if candidate and candidate != tokenizer.eos_token:",
        "if candidate:",
    ),
    m(
        "templates",
        TEMPLATES,
        "left padding in training",
        'tokenizer.padding_side = "right"',
        'tokenizer.padding_side = "left"',
    ),
    m(
        "templates",
        TEMPLATES,
        "chatml accepted on a tokenizer without its tokens",
        "missing = [t for t in CHATML_TOKENS if t not in tokenizer.get_vocab()]",
        "missing = []",
    ),
    m(
        "templates",
        TEMPLATES,
        "auto ignores the model's own chat template",
        'return tokenizer.chat_template or read_template("llama2")',
        'return read_template("llama2")',
    ),
    # ---------------------------------------------------------------- padding share and padding-free batches
    m(
        "padding",
        PADDING,
        "padding-free position ids collapsed into one range (packed rows attend to each other)",
        "        batch = self.collate(features)\n",
        "        batch = self.collate(features)\n        if 'position_ids' in batch:\n            positions = batch"
        "['position_ids']\n            batch['position_ids'] = positions.new_ones(positions.shape).cumsum(1) - 1\n",
    ),
    m(
        "padding",
        PADDING,
        "estimate ignores each batch's longest row",
        "slots += max(batch) * len(batch)",
        "slots += sum(batch)",
    ),
    m(
        "padding",
        PADDING,
        "estimate batches rows in file order, not shuffled",
        "random.Random(seed).shuffle(order)",
        "order.sort()",
    ),
    m(
        "padding",
        PADDING,
        "evaluation batches counted",
        "if self.trainer.model.training and isinstance(",
        "if isinstance(",
    ),
    m(
        "padding",
        PADDING,
        "padding counted as real tokens",
        "self.real += sum(int(mask.sum()) for mask in masks)",
        "self.real += sum(mask.numel() for mask in masks)",
    ),
    m(
        "padding",
        PADDING,
        "measured share inverted",
        "fraction = 1 - self.real / self.slots",
        "fraction = self.real / self.slots",
    ),
    # ---------------------------------------------------------------- PPO arithmetic
    m(
        "ppo_math",
        PPO_MATH,
        "masked mean over padding too",
        "return (x * mask).sum() / mask.sum().clamp(min=1)",
        "return x.mean()",
    ),
    m(
        "ppo_math",
        PPO_MATH,
        "whitening's variance over padding too",
        "var = masked_mean((x - mean) ** 2, mask)",
        "var = ((x - mean) ** 2).mean()",
    ),
    m(
        "ppo_math",
        PPO_MATH,
        "whitening leaves values at padding",
        "return (out if shift_mean else out + mean) * mask",
        "return out if shift_mean else out + mean",
    ),
    m(
        "ppo_math",
        PPO_MATH,
        "KL counted at padded positions",
        "kl = (logprobs - ref_logprobs) * mask",
        "kl = logprobs - ref_logprobs",
    ),
    m(
        "ppo_math",
        PPO_MATH,
        "score added at the last column, not each row's last real token",
        "last = mask.sum(dim=1).long().clamp(min=1) - 1",
        "last = torch.full_like(scores, mask.shape[1] - 1).long()",
    ),
    m("ppo_math", PPO_MATH, "KL rewarded instead of penalised", "rewards = -beta * kl", "rewards = beta * kl"),
    m(
        "ppo_math",
        PPO_MATH,
        "adaptive KL step unbounded",
        "min(max((kl - target) / target, -0.2), 0.2)",
        "(kl - target) / target",
    ),
    m(
        "ppo_math",
        PPO_MATH,
        "GAE: next value not discounted",
        "delta = rewards[:, t] + gamma * next_value - values[:, t]",
        "delta = rewards[:, t] + next_value - values[:, t]",
    ),
    m(
        "ppo_math",
        PPO_MATH,
        "GAE: advantages decay by lambda alone",
        "(delta + gamma * lam * next_advantage)",
        "(delta + lam * next_advantage)",
    ),
    m(
        "ppo_math",
        PPO_MATH,
        "GAE: a padded position's value leaks into the last real token",
        "next_value = values[:, t] * mask[:, t]",
        "next_value = values[:, t]",
    ),
    m(
        "ppo_math",
        PPO_MATH,
        "GAE: returns at padded positions",
        "return advantages, (advantages + values) * mask",
        "return advantages, advantages + values",
    ),
    m(
        "ppo_math",
        PPO_MATH,
        "policy loss: the optimistic (min) surrogate",
        "masked_mean(torch.maximum(unclipped, clipped), mask)",
        "masked_mean(torch.minimum(unclipped, clipped), mask)",
    ),
    m("ppo_math", PPO_MATH, "clip fraction counts ties", "(clipped > unclipped)", "(clipped >= unclipped)"),
    m(
        "ppo_math",
        PPO_MATH,
        "probability ratio inverted",
        "torch.exp(logprobs - old_logprobs)",
        "torch.exp(old_logprobs - logprobs)",
    ),
    m(
        "ppo_math",
        PPO_MATH,
        "value loss: the better (min) of clipped and unclipped",
        "torch.maximum((values - returns) ** 2",
        "torch.minimum((values - returns) ** 2",
    ),
    m("ppo_math", PPO_MATH, "entropy's sign", "-(logp.exp() * logp).sum(-1)", "(logp.exp() * logp).sum(-1)"),
    m(
        "ppo_math",
        PPO_MATH,
        "Llama 2 rule: safety only when tagged and unsafe",
        "is_safety_prompt | (torch.sigmoid",
        "is_safety_prompt & (torch.sigmoid",
    ),
    m(
        "ppo_math",
        PPO_MATH,
        "Llama 2 rule: threshold on the logit, not the probability",
        "torch.sigmoid(safety) < threshold",
        "safety < threshold",
    ),
    # ---------------------------------------------------------------- RL sampling and score positions
    m(
        "sampling",
        SAMPLING,
        "response mask stops before the EOS",
        "(positions <= first_eos.unsqueeze(1))",
        "(positions < first_eos.unsqueeze(1))",
    ),
    m(
        "sampling",
        SAMPLING,
        "a response without EOS loses its last token",
        "is_eos.int().argmax(dim=1), responses.shape[1] - 1)",
        "is_eos.int().argmax(dim=1), responses.shape[1] - 2)",
    ),
    m(
        "sampling",
        SAMPLING,
        "response mask runs to the last EOS, not the first",
        "is_eos.int().argmax(dim=1)",
        "is_eos.int().cumsum(1).argmax(dim=1)",
    ),
    m(
        "sampling",
        SAMPLING,
        "positions counted from column 0 of left-padded rows",
        "position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)",
        "position_ids = torch.arange(attention_mask.shape[1]).expand_as(attention_mask)",
    ),
    m(
        "sampling",
        SAMPLING,
        "score read at the EOS, not after the template's ending",
        "return batch, q + lengths + added - 1",
        "return batch, q + lengths - 1",
    ),
    m(
        "sampling",
        SAMPLING,
        "the template's ending written over the EOS",
        "ids[row, length : length + len(ending)] = torch",
        "ids[row, length - 1 : length - 1 + len(ending)] = torch",
    ),
    m(
        "sampling",
        SAMPLING,
        "the template's ending taken with its EOS (EOS doubled)",
        "ids[len(ids) - ids[::-1].index(tokenizer.eos_token_id) :]",
        "ids[len(ids) - ids[::-1].index(tokenizer.eos_token_id) - 1 :]",
    ),
    m(
        "sampling",
        SAMPLING,
        "cut-off responses scored as finished ones",
        "[after_eos if finished else cut_off for finished",
        "[after_eos for finished",
    ),
    m(
        "sampling",
        SAMPLING,
        "the fixed score given to finished responses",
        "torch.where(samples.has_eos, scores,",
        "torch.where(~samples.has_eos, scores,",
    ),
    m(
        "sampling",
        SAMPLING,
        "prompt rows not aligned with their samples",
        "[row for row in rows for _ in range(per_prompt)]",
        "[row for _ in range(per_prompt) for row in rows]",
    ),
    m(
        "sampling",
        SAMPLING,
        "queries' masks tiled instead of repeated per sample",
        'query["attention_mask"].repeat_interleave(per_prompt, dim=0)',
        'query["attention_mask"].repeat(per_prompt, 1)',
    ),
    # ---------------------------------------------------------------- precision and finite checks
    m("precision", PRECISION, "finite check misses inf", "not torch.isfinite(p).all()", "torch.isnan(p).any()"),
    m(
        "precision",
        PRECISION,
        "finite check needs every value broken",
        "not torch.isfinite(p).all()",
        "not torch.isfinite(p).any()",
    ),
    m(
        "precision",
        PRECISION,
        "compute capability 8.0 (A100) treated as pre-Ampere",
        "self.capability >= (8, 0)",
        "self.capability > (8, 0)",
    ),
    m(
        "precision",
        PRECISION,
        "fp16 accepted on a CPU",
        'if requested == "fp16" and hardware.device != "cuda":',
        "if False:",
    ),
    m(
        "precision",
        PRECISION,
        "frozen weights cast to fp32 too",
        "if param.requires_grad and param.dtype != torch.float32:",
        "if param.dtype != torch.float32:",
    ),
    m(
        "precision",
        PRECISION,
        "a CPU's native bf16 ignored",
        "(hardware.cuda_bf16 or hardware.cpu_native_bf16)",
        "hardware.cuda_bf16",
    ),
    # ---------------------------------------------------------------- one writer per output
    m(
        "locks",
        LOCKS,
        "a held lock blocks instead of refusing",
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n        except BlockingIOError:\n            holder = read",
        "fcntl.flock(fd, fcntl.LOCK_EX)\n        except BlockingIOError:\n            holder = read",
        tests=[T + "test_run_safety.py::test_a_lock_dies_with_its_holder_even_on_kill_9"],
    ),
    m(
        "locks",
        LOCKS,
        "the holder not named",
        'return f"pid {pid}: {command}" if command else f"pid {pid}"',
        'return "another process"',
    ),
    m("locks", LOCKS, "release leaves the lock file", "    lock_file.unlink(missing_ok=True)\n", "    pass\n"),
    m(
        "locks",
        LOCKS,
        "a process refuses a lock it already holds",
        "    if holds(lock_file):\n        return\n    while True:",
        "    while True:",
    ),
    m(
        "locks",
        LOCKS,
        "holder() reports this process's own lock as another's",
        "    if holds(lock_file):\n        return None\n",
        "",
    ),
    # ---------------------------------------------------------------- the method table -> CLI
    m(
        "cli_train",
        CLI_TRAIN,
        "every training command trains the last method (late-bound loop variable)",
        "train(method, recipe, overrides, output_dir, resume, overwrite, dry_run, *options)",
        "train(_method.name, recipe, overrides, output_dir, resume, overwrite, dry_run, *options)",
    ),
    m(
        "cli_train",
        CLI_TRAIN,
        "a command's help is its name",
        "add_training_command(_method.name, _method.help)",
        "add_training_command(_method.name, _method.name)",
    ),
    m(
        "cli_train",
        CLI_TRAIN,
        "launched processes lose --resume",
        'return args + ["--resume"] * resume + ["--overwrite"] * overwrite',
        'return args + ["--overwrite"] * overwrite',
    ),
    m("cli_train", CLI_TRAIN, "launched processes lose the --set overrides", 'args += ["--set", override]', "pass"),
    # ---------------------------------------------------------------- Bradley-Terry leaderboard
    m(
        "bradley_terry",
        BT,
        "natural log-odds read as Elo points",
        "ELO_PER_NAT = 400 / math.log(10)",
        "ELO_PER_NAT = 400",
    ),
    m("bradley_terry", BT, "a tie counted as a win for A", "np.array([1.0, 0.0, 0.5])", "np.array([1.0, 0.0, 1.0])"),
    m(
        "bradley_terry",
        BT,
        "P(i beats j) with the sign flipped",
        "p = np.exp(-np.logaddexp(0, strength[None, :] - strength[:, None]))",
        "p = np.exp(-np.logaddexp(0, strength[:, None] - strength[None, :]))",
    ),
    m(
        "bradley_terry",
        BT,
        "well_posed true when any pair is connected",
        "return bool(reach.all())",
        "return bool(reach.any())",
    ),
    m(
        "bradley_terry",
        BT,
        "a 50% interval reported as 95%",
        "np.percentile(scores, 2.5, axis=0)",
        "np.percentile(scores, 25, axis=0)",
    ),
    m("bradley_terry", BT, "models ordered lowest first", "key=lambda i: -scores[i]", "key=lambda i: scores[i]"),
    m("bradley_terry", BT, "win-rate matrix transposed", "wins[i, j] / games[i, j]", "wins[j, i] / games[i, j]"),
    m(
        "bradley_terry",
        BT,
        "wins and losses swapped in the counts",
        '"wins" if outcome == won else "losses"',
        '"losses" if outcome == won else "wins"',
    ),
    m(
        "bradley_terry",
        BT,
        "the bootstrap unseeded",
        "rng = np.random.default_rng(seed)",
        "rng = np.random.default_rng()",
    ),
    m(
        "bradley_terry",
        BT,
        "scores not centred on 1000",
        "(strength - strength.mean()) + 1000",
        "strength + 1000",
        equivalent="the strengths already sum to zero: they start at zero, the gradient's entries sum to "
        "2 * RIDGE * sum(strength) and 1'H = 2 * RIDGE * 1', so every Newton step (and its backtracked fraction) sums "
        "to zero; subtracting the mean changes the scores by rounding error only (below 1e-9 points)",
    ),
    # ---------------------------------------------------------------- checkpoints: save and restore
    m(
        "checkpoints",
        RUNS,
        "resume from the first complete checkpoint, not the last",
        "return complete[-1] if complete else None",
        "return complete[0] if complete else None",
    ),
    m(
        "checkpoints",
        RUNS,
        "a checkpoint whose save never finished counts as complete",
        "return not self.markers or any(",
        "return True or any(",
    ),
    m(
        "checkpoints",
        RUNS,
        "a cut-short JSON marker counts as written",
        'json.loads(path.read_text(encoding="utf-8"))',
        'path.read_text(encoding="utf-8")',
    ),
    m(
        "checkpoints",
        RUNS,
        "resume removes the checkpoint it resumes from",
        "if latest is None or step_of(folder) > step_of(latest):",
        "if latest is None or step_of(folder) >= step_of(latest):",
    ),
    m(
        "checkpoints",
        PPO_TRAINER,
        "PPO checkpoint rounds the trainable weights through bf16",
        "trainable = {n: p.detach().cpu() for n, p",
        "trainable = {n: p.detach().cpu().bfloat16() for n, p",
    ),
    m(
        "checkpoints",
        PPO_TRAINER,
        "PPO checkpoint keeps the KL coefficient in float32 (a rel=1e-4 comparison lets it pass)",
        '                "kl_beta": self.kl_beta,\n',
        '                "kl_beta": torch.tensor(self.kl_beta).item(),\n',
    ),
    m(
        "checkpoints",
        PPO_TRAINER,
        "PPO resume without the optimiser state",
        '        self.optimizer.load_state_dict(state["optimizer"])\n',
        "",
    ),
    m(
        "checkpoints",
        PPO_TRAINER,
        "PPO resume with the recipe's KL coefficient, not the checkpoint's",
        'self.kl_beta = state.get("kl_beta", self.settings.kl_beta)',
        "self.kl_beta = self.settings.kl_beta",
    ),
    m(
        "checkpoints",
        PPO_TRAINER,
        "PPO resume keeps samples of steps after the checkpoint",
        'if json.loads(line)["step"] <= self.start_step',
        "if True",
    ),
]
