"""Held-out tool calls before and after SFT on builtin:tool_calls: each held-out conversation's first user turn is
answered greedily (with the tools the row offers, in the chatml template), and the reply is read back as calls.

    python benchmarks/tool_calls.py [--run runs/smollm2-135m-sft-tools]   # writes benchmarks/results/tool_calls.json
    python benchmarks/tool_calls.py --sides before        # one side only (the other's figures in the file are kept)

A valid call parses (`<tool_call>{json}</tool_call>` with a name and object arguments), names one of the row's
tools, gives every argument the tool's schema requires and none it does not declare; a reply is valid when it makes
at least one call and every call is valid; it calls the right tools when it is valid and names the held-out row's
tools, call by call (the right tool, and two calls where two are needed). It is exact when its calls are the
held-out conversation's own calls (same names, same arguments). Rows whose answer needs no tool count as right when
the reply makes no call.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from posttrain.cli.support import quiet_libraries
from posttrain.data.sources import read_rows
from posttrain.data.tool_calls import fits_schema, parse_reply, tool_calls, tool_schemas
from posttrain.inference.generation import GenerationSettings, generate_replies_to_chats
from posttrain.models.loading import load_run_model

RESULTS = Path(__file__).parent / "results" / "tool_calls.json"


def held_out(source: str) -> list[dict]:
    """Each row's prompt (up to its first user turn), tools and the calls its first assistant turn makes."""
    cases = []
    for row in read_rows(source):
        messages = row.data["messages"]
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        calls = tool_calls(messages[first]["tool_calls"]) if messages[first].get("tool_calls") else []
        cases.append({"prompt": messages[:first], "tools": tool_schemas(row.data["tools"]), "expected": calls})
    return cases


def judge(case: dict, text: str) -> dict:
    calls = parse_reply(text)[1]
    valid = bool(calls) and all(fits_schema(call, case["tools"]) for call in calls)
    named = [call["function"]["name"] for call in calls] == [call["function"]["name"] for call in case["expected"]]
    return {
        "reply": text,
        "calls": calls,
        "valid": valid,
        "right_tool": valid and named,
        "exact": calls == case["expected"],
    }


def load(model_name: str, base: str):
    """A model or run as posttrain loads it (nf4, chatml), or `base` with the adapter of a run's checkpoint folder
    (a run stopped before its last step)."""
    if (Path(model_name) / "adapter_config.json").is_file():
        from peft import PeftModel

        model, tokenizer = load_run_model(base, quantization="nf4", chat_template="chatml")
        return PeftModel.from_pretrained(model, model_name).eval(), tokenizer
    return load_run_model(model_name, quantization="nf4", chat_template="chatml")


def measure(model_name: str, base: str, cases: list[dict], batch_size: int, max_new_tokens: int) -> dict:
    start = time.perf_counter()
    model, tokenizer = load(model_name, base)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    judged = []
    for i in range(0, len(cases), batch_size):
        batch = cases[i : i + batch_size]
        chats, tools = [c["prompt"] for c in batch], [c["tools"] for c in batch]
        replies = generate_replies_to_chats(model, tokenizer, chats, settings, tools)
        judged += [judge(case, reply.text) for case, reply in zip(batch, replies, strict=True)]
    calling = [j for j, c in zip(judged, cases, strict=True) if c["expected"]]
    plain = [j for j, c in zip(judged, cases, strict=True) if not c["expected"]]
    return {
        "model": model_name,
        "rows needing a call": len(calling),
        "valid call share": round(sum(j["valid"] for j in calling) / len(calling), 3),
        "valid call of the right tools share": round(sum(j["right_tool"] for j in calling) / len(calling), 3),
        "exact call share": round(sum(j["exact"] for j in calling) / len(calling), 3),
        "rows needing no call": len(plain),
        "answered without a call": sum(not j["calls"] for j in plain),
        "seconds": round(time.perf_counter() - start, 1),
        "replies": judged,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--run", default="runs/smollm2-135m-sft-tools", help="a run, or a checkpoint folder of one")
    parser.add_argument("--held-out", default="builtin:tool_calls_heldout")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sides", nargs="+", choices=["before", "after"], default=["before", "after"])
    args = parser.parse_args()
    quiet_libraries()
    cases = held_out(args.held_out)
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    results |= {"held_out": args.held_out, "max_new_tokens": args.max_new_tokens}
    for side in args.sides:
        name = args.base if side == "before" else args.run
        results[side] = measure(name, args.base, cases, args.batch_size, args.max_new_tokens)
        summary = {k: v for k, v in results[side].items() if k != "replies"}
        print(side, json.dumps(summary))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
