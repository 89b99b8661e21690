"""Write the built-in tool-calling sets: builtin:tool_calls (training) and builtin:tool_calls_heldout.

    python scripts/make_tool_calls.py

Four small tools (weather, calculator, unit conversion, local time) whose results come from fixed tables and
arithmetic, so every answer agrees with its tool's result and a rerun writes the same files. Each conversation
offers two or three of the tools; most ask for one call, some for two at once, and some need no tool at all. The
held-out set uses cities, numbers and wordings the training set never shows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

BUILTIN = Path(__file__).resolve().parent.parent / "posttrain" / "data" / "builtin"
SYSTEM = "You are a helpful assistant. Use a tool when it helps."


def schema(name: str, description: str, **properties: str) -> dict:
    """A tool in the form chat templates take; every parameter is required."""
    props = {key: {"type": kind} for key, kind in properties.items()}
    parameters = {"type": "object", "properties": props, "required": list(properties)}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


TOOLS = {
    "get_weather": schema("get_weather", "Current weather in a city.", city="string"),
    "calculate": schema("calculate", "Evaluate an arithmetic expression.", expression="string"),
    "convert_units": schema(
        "convert_units",
        "Convert a quantity between units.",
        value="number",
        from_unit="string",
        to_unit="string",
    ),
    "get_local_time": schema("get_local_time", "Current local time in a city.", city="string"),
}
# (temperature in C, sky, UTC offset in hours); the held-out cities come last.
CITIES = {
    "Paris": (18, "partly cloudy", 1),
    "Tokyo": (24, "sunny", 9),
    "Cairo": (33, "clear", 2),
    "Oslo": (7, "rainy", 1),
    "Lima": (19, "overcast", -5),
    "Sydney": (22, "windy", 10),
    "Toronto": (11, "snowy", -5),
    "Mumbai": (30, "humid", 5.5),
    "Madrid": (26, "sunny", 1),
    "Nairobi": (21, "cloudy", 3),
    "Denver": (14, "clear", -7),
    "Seoul": (16, "rainy", 9),
    "Dublin": (12, "drizzly", 0),
    "Berlin": (15, "foggy", 1),
}
HELDOUT_CITIES = ("Dublin", "Berlin")
NOW_UTC = 14 * 60 + 5  # the tools' fixed "now": 14:05 UTC
UNITS = {  # (from, to): factor; temperatures are converted by formula
    ("km", "miles"): 0.621371,
    ("miles", "km"): 1.609344,
    ("kg", "pounds"): 2.204623,
    ("pounds", "kg"): 0.453592,
    ("liters", "gallons"): 0.264172,
    ("meters", "feet"): 3.280840,
}
TEMPERATURES = {
    ("celsius", "fahrenheit"): lambda c: c * 9 / 5 + 32,
    ("fahrenheit", "celsius"): lambda f: (f - 32) * 5 / 9,
}

WEATHER_ASKS = [
    "What's the weather in {city}?",
    "Is it warm in {city} right now?",
    "How is the weather in {city} today?",
]
TIME_ASKS = ["What time is it in {city}?", "Tell me the local time in {city}.", "What's the time in {city} now?"]
CALC_ASKS = ["What is {expr}?", "Can you calculate {expr} for me?", "Work out {expr}, please."]
CONVERT_ASKS = ["How many {to} is {value} {frm}?", "Convert {value} {frm} to {to}.", "What is {value} {frm} in {to}?"]
BOTH_ASKS = ["What's the weather in {a} and in {b}?", "Compare the weather in {a} and {b}."]
NO_TOOL = [
    (
        "Hi! What can you help me with?",
        "I can look up the weather and local time in a city, do arithmetic and "
        "convert units. What would you like to know?",
    ),
    ("Thanks, that's all.", "You're welcome! Have a good day."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Tell me a fun fact about octopuses.", "An octopus has three hearts and blue blood."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
]
HELDOUT_NO_TOOL = [("Say hello in Spanish.", "Hola!"), ("What color is the sky on a clear day?", "It is blue.")]


def number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(x, 2)


def call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def weather(city: str) -> tuple[dict, str, str]:
    temp, sky, _ = CITIES[city]
    result = json.dumps({"city": city, "temperature_c": temp, "conditions": sky})
    return call("get_weather", city=city), result, f"It is {temp} °C and {sky} in {city}."


def local_time(city: str) -> tuple[dict, str, str]:
    minutes = (NOW_UTC + round(CITIES[city][2] * 60)) % (24 * 60)
    clock = f"{minutes // 60:02d}:{minutes % 60:02d}"
    result = json.dumps({"city": city, "local_time": clock})
    return call("get_local_time", city=city), result, f"It is {clock} in {city} right now."


def calculation(rng: random.Random) -> tuple[str, dict, str, str]:
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 12)
    expr = rng.choice([f"{a} + {b}", f"{a} * {b}", f"{a} - {b}", f"({a} + {b}) * {c}", f"{a * c} / {c}"])
    value = number(eval(expr))  # noqa: S307 - our own arithmetic on digits only
    result = json.dumps({"result": value})
    return expr, call("calculate", expression=expr), result, f"{expr} = {value}."


def conversion(rng: random.Random) -> tuple[dict, dict, str, str]:
    pairs = list(UNITS) + list(TEMPERATURES)
    frm, to = rng.choice(pairs)
    value = rng.choice([1, 2, 5, 10, 12, 20, 25, 42, 50, 100])
    converted = number(TEMPERATURES[(frm, to)](value) if (frm, to) in TEMPERATURES else value * UNITS[(frm, to)])
    result = json.dumps({"value": converted, "unit": to})
    words = {"value": value, "frm": frm, "to": to}
    return (
        words,
        call("convert_units", value=value, from_unit=frm, to_unit=to),
        result,
        f"{value} {frm} is {converted} {to}.",
    )


def offered(rng: random.Random, needed: list[str]) -> list[dict]:
    """The tools a conversation offers: the ones it needs, plus others up to two or three, in a fixed order."""
    others = [name for name in TOOLS if name not in needed]
    names = set(needed) | set(rng.sample(others, max(0, rng.choice([2, 3]) - len(needed))))
    return [TOOLS[name] for name in TOOLS if name in names]


def conversation(rng: random.Random, kind: str, cities: list[str], no_tool: list[tuple[str, str]]) -> dict:
    if kind == "none":
        question, answer = rng.choice(no_tool)
        return row(rng, [], question, [], [], answer)
    if kind == "weather2":
        a, b = rng.sample(cities, 2)
        (call_a, res_a, say_a), (call_b, res_b, say_b) = weather(a), weather(b)
        question = rng.choice(BOTH_ASKS).format(a=a, b=b)
        return row(rng, ["get_weather"], question, [call_a, call_b], [res_a, res_b], f"{say_a} {say_b}")
    if kind in ("weather", "time"):
        city = rng.choice(cities)
        made, result, answer = (weather if kind == "weather" else local_time)(city)
        question = rng.choice(WEATHER_ASKS if kind == "weather" else TIME_ASKS).format(city=city)
        return row(rng, [made["function"]["name"]], question, [made], [result], answer)
    if kind == "calculate":
        expr, made, result, answer = calculation(rng)
        return row(rng, ["calculate"], rng.choice(CALC_ASKS).format(expr=expr), [made], [result], answer)
    words, made, result, answer = conversion(rng)
    return row(rng, ["convert_units"], rng.choice(CONVERT_ASKS).format(**words), [made], [result], answer)


def row(rng, needed: list[str], question: str, calls: list[dict], results: list[str], answer: str) -> dict:
    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.5 else []
    messages.append({"role": "user", "content": question})
    if calls:
        messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        messages += [{"role": "tool", "content": result} for result in results]
    messages.append({"role": "assistant", "content": answer})
    return {"messages": messages, "tools": offered(rng, needed)}


KINDS = ["weather"] * 5 + ["time"] * 4 + ["calculate"] * 5 + ["convert"] * 5 + ["weather2", "none", "none"]


def question(row: dict) -> str:
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


def build(count: int, seed: int, cities: list[str], no_tool: list[tuple[str, str]], unseen=()) -> list[dict]:
    """`count` conversations, none asking a question of `unseen` (the training rows, for the held-out set)."""
    rng, rows, asked = random.Random(seed), [], {question(r) for r in unseen}
    while len(rows) < count:
        made = conversation(rng, KINDS[len(rows) % len(KINDS)], cities, no_tool)
        if question(made) not in asked:
            rows.append(made)
    return rows


def write(name: str, rows: list[dict]) -> None:
    path = BUILTIN / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{path}: {len(rows)} conversations")


if __name__ == "__main__":
    train_cities = [c for c in CITIES if c not in HELDOUT_CITIES]
    train = build(96, seed=0, cities=train_cities, no_tool=NO_TOOL)
    write("tool_calls", train)
    write("tool_calls_heldout", build(24, seed=1, cities=list(HELDOUT_CITIES), no_tool=HELDOUT_NO_TOOL, unseen=train))
