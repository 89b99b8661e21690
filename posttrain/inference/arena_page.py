"""`posttrain serve --arena`: the human-vote page of an arena, as in Chatbot Arena.

A prompt goes to two of the models, drawn at random and shown only as "Model A" and "Model B"; both replies stream
side by side. Once both are complete the person votes (A is better, B is better, Tie, Both are bad), the vote is
appended to the votes file (arena_votes.py) with the round's id and, behind --auth, the login name, and the names
are revealed. A round counts one vote: a second click on it is not written again. "New round" clears the page.
"""

from __future__ import annotations

import contextlib
import queue
import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import UserError
from posttrain.inference.arena_votes import VotesFile, vote_row
from posttrain.inference.conversation import Conversation
from posttrain.inference.generation import GenerationSettings
from posttrain.inference.serve import Address, ServedModel, import_gradio, load_served_model

VOTES = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
draw = random.SystemRandom()  # which two models, and which is A: nothing a voter could learn to predict


@dataclass(frozen=True)
class Round:
    """A prompt and the two complete replies, waiting for a vote."""

    id: str  # the vote's id: one vote per round
    prompt: str
    model_a: str
    model_b: str
    reply_a: str
    reply_b: str


def serve_arena(
    names: list[str], address: Address, system: str, settings: GenerationSettings, chat_template: str, votes: Path
) -> None:
    """Load every MODEL once and serve the arena page until Ctrl-C."""
    import_gradio()  # before the models load: a missing extra is reported at once
    votes_file = VotesFile(votes)
    votes_file.prepare()
    served = [load_served_model(name, chat_template) for name in names]
    address.launch(ArenaPage(served, system.strip() or None, settings, votes_file).build())


class ArenaPage:
    """The page's components, and what each button does to them. One page serves every browser tab; what a tab's
    round holds lives in its gr.State."""

    def __init__(self, models: list[ServedModel], system: str | None, settings: GenerationSettings, votes: VotesFile):
        self.models, self.system, self.settings, self.votes = models, system, settings, votes
        self.gr = import_gradio()

    def build(self):
        gr = self.gr
        with gr.Blocks(title="posttrain arena", analytics_enabled=False) as page:
            gr.Markdown(
                f"# posttrain arena · {len(self.models)} models\n"
                "Two of them, drawn at random, answer your prompt anonymously. Vote for the better answer; "
                "the names are revealed after the vote."
            )
            self.count = gr.Markdown(elem_id="vote-count")
            with gr.Row(equal_height=True):
                self.sides = [
                    gr.Chatbot(label=f"Model {side.upper()}", elem_id=f"model-{side}", buttons=["copy"])
                    for side in ("a", "b")
                ]
            with gr.Row():
                self.buttons = [
                    gr.Button(text, interactive=False, elem_id=f"vote-{key}") for key, text in VOTES.items()
                ]
            self.reveal = gr.Markdown(elem_id="reveal")
            with gr.Row():
                self.prompt = gr.Textbox(
                    placeholder="Prompt (Enter sends)", show_label=False, elem_id="prompt", scale=8
                )
                self.send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
            self.new_round = gr.Button("New round", visible=False, elem_id="new-round")
            self.round = gr.State(None)

            everything = [self.round, self.reveal, self.count, *self.sides, self.prompt, self.send, self.new_round]
            everything += self.buttons
            # One generation at a time: every tab shares the loaded models.
            gr.on([self.prompt.submit, self.send.click], self.ask, [self.prompt], everything, concurrency_limit=1)
            for key, button in zip(VOTES, self.buttons, strict=True):
                button.click(self.vote_button(key), [self.round], everything)
            self.new_round.click(self.clear, None, everything)
            page.load(self.tally_text, None, self.count)
        return page

    def ask(self, prompt: str):
        gr = self.gr
        prompt = prompt.strip()
        if not prompt:
            raise gr.Error("Type a prompt first.")
        model_a, model_b = draw.sample(self.models, 2)
        messages = Conversation(self.system, [{"role": "user", "content": prompt}]).messages()
        if not (model_a.fits(messages, self.settings) and model_b.fits(messages, self.settings)):
            raise gr.Error("That prompt does not fit a model's context with room for a reply; shorten it.")
        yield {self.prompt: gr.Textbox(value="", interactive=False), self.send: gr.Button(interactive=False)}
        replies = ["", ""]
        try:
            for replies in stream_together([m.reply_so_far(messages, self.settings) for m in (model_a, model_b)]):
                yield {side: exchange(prompt, reply) for side, reply in zip(self.sides, replies, strict=True)}
        except Exception as err:  # give the prompt box back, so the page is not stuck
            yield {self.prompt: gr.Textbox(value=prompt, interactive=True), self.send: gr.Button(interactive=True)}
            raise gr.Error(f"The models could not answer: {err}") from err
        done = Round(uuid.uuid4().hex, prompt, model_a.name, model_b.name, *replies)
        yield {self.round: done} | {button: gr.Button(interactive=True) for button in self.buttons}

    def vote_button(self, winner: str):
        """What a vote button runs. gradio hands it the request (and so the login name) by the parameter's type,
        which must be the class itself: this module's annotations are strings, and gr is imported late."""

        def vote(done: Round | None, request) -> dict:
            return self.vote(winner, done, getattr(request, "username", None))

        vote.__annotations__ = {"request": self.gr.Request}
        return vote

    def vote(self, winner: str, done: Round | None, voter: str | None = None):
        gr = self.gr
        if done is None:  # the buttons are off until both replies are complete: a second click
            raise gr.Error("This round has no complete answers to vote on; start a new round.")
        row = vote_row(done.prompt, done.model_a, done.model_b, done.reply_a, done.reply_b, winner, done.id, voter)
        try:
            written = self.votes.append(row)
        except UserError as err:  # what `eval arena` would refuse is not counted here either
            raise gr.Error(f"This vote cannot be counted: {err}") from None
        except OSError as err:
            raise gr.Error(f"The vote could not be written to {self.votes.path}: {err.strerror}. Try again.") from None
        side_a, side_b = self.sides
        once = "" if written else " (this round's vote was already recorded; it counts once)"
        return {
            self.round: None,
            self.reveal: f"Model A: `{done.model_a}` · Model B: `{done.model_b}` · your vote: {VOTES[winner]}{once}",
            self.count: self.tally_text(),
            side_a: gr.Chatbot(label=f"Model A · {done.model_a}"),
            side_b: gr.Chatbot(label=f"Model B · {done.model_b}"),
            self.new_round: gr.Button(visible=True),
        } | {button: gr.Button(interactive=False) for button in self.buttons}

    def clear(self):
        gr = self.gr
        side_a, side_b = self.sides
        return {
            self.round: None,
            self.reveal: "",
            self.count: self.tally_text(),
            side_a: gr.Chatbot(value=[], label="Model A"),
            side_b: gr.Chatbot(value=[], label="Model B"),
            self.prompt: gr.Textbox(value="", interactive=True),
            self.send: gr.Button(interactive=True),
            self.new_round: gr.Button(visible=False),
        } | {button: gr.Button(interactive=False) for button in self.buttons}

    def tally_text(self) -> str:
        tally = self.votes.tally()
        skipped = f" ({tally.skipped} unreadable line(s) skipped)" if tally.skipped else ""
        repeated = f" ({tally.duplicates} repeated vote(s) of a round counted once)" if tally.duplicates else ""
        return f"**{tally.votes}** vote(s) recorded in `{self.votes.path}`{skipped}{repeated}"


def exchange(prompt: str, reply: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def stream_together(streams: list[Iterator[str]]) -> Iterator[list[str]]:
    """Run each stream of texts-so-far in its own thread, so that the replies grow side by side; yield every
    stream's latest text whenever one has moved on, until all have ended. Closing this generator ends them all
    within one piece (closing a stream of serve.accumulate stops its generation)."""
    updates: queue.Queue = queue.Queue()
    stop = threading.Event()
    ended = object()

    def drain(index: int, stream: Iterator[str]) -> None:
        try:
            with contextlib.closing(stream):
                for text in stream:
                    updates.put((index, text))
                    if stop.is_set():
                        break
        except BaseException as err:  # handed to the reader, which re-raises it
            updates.put((index, err))
        updates.put((index, ended))

    latest, running = [""] * len(streams), len(streams)
    workers = [threading.Thread(target=drain, args=pair, daemon=True) for pair in enumerate(streams)]
    for worker in workers:
        worker.start()
    try:
        while running:
            index, item = updates.get()
            if item is ended:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                latest[index] = item
                if updates.empty():  # a burst of pieces is shown once
                    yield list(latest)
        yield list(latest)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
