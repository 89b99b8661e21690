"""Padded against padding-free SFT batches, step by step: smollm2-135m (nf4, LoRA r=16 all-linear, fp32), the same
batches of 4 long-tailed conversations (benchmarks/train_speed.py), one forward and backward each, the two kinds
alternating batch by batch in this one process so that machine load falls on both alike.

    python benchmarks/padding_speed.py BATCHES      # writes benchmarks/results/padding_speed.json
"""

import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import long_tailed_conversations
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from posttrain.cli.support import quiet_libraries
from posttrain.methods.common import load_trainable_model, prepare_stage
from posttrain.recipe import build_recipe

quiet_libraries()
recipe = build_recipe(
    {
        "method": "sft",
        "model": {"name": "smollm2-135m", "quantization": "nf4", "chat_template": "chatml"},
        "data": {"train": "builtin:pirate_sft"},
        "output_dir": "runs/unused",
    }
)
stage = prepare_stage(recipe)
tok = stage.tokenizer
model = load_trainable_model(stage)
model.train()
rows = long_tailed_conversations()
ids = [tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"] for r in rows]
ids = [i for i in ids if len(i) <= 1024]
order = list(range(len(ids)))
random.Random(42).shuffle(order)
batches = [[{"input_ids": ids[i]} for i in order[s : s + 4]] for s in range(0, 4 * int(sys.argv[1]), 4)]
padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)
free = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)


def step(batch):
    t = time.perf_counter()
    out = model(**batch, use_cache=False)
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t


times = {"padded": [], "padding_free": []}
real, slots = [], []  # real tokens, and the tokens a padded batch holds (rows x its longest row)
step(padded(batches[0]))
step(free(batches[0]))  # warm-up
load = [os.getloadavg()]
for n, b in enumerate(batches):
    real.append(sum(len(f["input_ids"]) for f in b))
    slots.append(len(b) * max(len(f["input_ids"]) for f in b))
    pair = [("padded", padded), ("padding_free", free)] if n % 2 == 0 else [("padding_free", free), ("padded", padded)]
    for name, collate in pair:
        times[name].append(step(collate(b)))
    print(n, real[-1], {k: round(v[-1], 1) for k, v in times.items()}, flush=True)
load.append(os.getloadavg())
res = {
    k: {"s_per_batch": round(sum(v) / len(v), 2), "real_tokens_per_s": round(sum(real) / sum(v), 1)}
    for k, v in times.items()
}
res["speedup_real_tokens_per_s"] = round(sum(times["padded"]) / sum(times["padding_free"]), 2)
res["batches"] = len(batches)
res["real_tokens_per_batch"] = round(sum(real) / len(real), 1)
res["padding_fraction_padded"] = round(1 - sum(real) / sum(slots), 3)  # padding-free batches hold none
res["load"] = load
print(json.dumps(res))
(Path(__file__).parent / "results" / "padding_speed.json").write_text(json.dumps(res, indent=2) + "\n")
