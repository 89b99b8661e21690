"""`posttrain serve`: the web chat page, tested in a real browser (Debian's chromium driven by playwright)."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from posttrain.inference.serve import conversation_of

CHROMIUM = Path("/usr/bin/chromium")  # playwright cannot download its own browser here
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every length the reply shows, in order: a streamed reply grows in steps, a finished one appears at once.
RECORD_REPLY_LENGTHS = """() => {
  window.replyLengths = [];
  const chat = document.querySelector('#chat');
  new MutationObserver(() => {
    const reply = chat.querySelector('[data-testid="bot"]');
    const seen = window.replyLengths;
    if (reply && seen[seen.length - 1] !== reply.innerText.length) seen.push(reply.innerText.length);
  }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def test_gradio_history_becomes_the_conversation_the_model_sees():
    history = [  # gradio 6 hands messages over with their content as a list of parts
        {"role": "user", "content": [{"type": "text", "text": "Hi!"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Arr, hello."}], "metadata": None},
    ]
    conversation = conversation_of(history, "  Talk like a pirate. ", "And now?")
    assert conversation.messages() == [
        {"role": "system", "content": "Talk like a pirate."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Arr, hello."},
        {"role": "user", "content": "And now?"},
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served_page(tmp_path, tiny_model):
    """`posttrain serve tiny-llama2` in its own process, greedy and long-winded; yields the page's URL."""
    port = free_port()
    command = [sys.executable, "-m", "posttrain", "serve", "tiny-llama2", "--port", str(port)]
    command += ["--temperature", "0", "--max-new-tokens", "300"]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.time() < deadline, "the page did not come up in 3 minutes"
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_a_message_typed_in_chromium_gets_a_streamed_reply(served_page, tmp_path):
    assert CHROMIUM.is_file(), "the browser test needs Debian's chromium: apt-get install chromium (make test does)"
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(served_page)
        message = page.locator("#message textarea")
        expect(message).to_be_editable(timeout=60_000)
        for control in ("System prompt", "Temperature (0 = greedy)", "Top-p", "Max new tokens"):
            expect(page.get_by_label(control).first).to_be_visible()
        page.evaluate(RECORD_REPLY_LENGTHS)

        message.fill("Tell me about the sea.")
        message.press("Enter")
        expect(page.locator('#chat [data-testid="user"]')).to_have_text("Tell me about the sea.")
        expect(page.locator('#chat [data-testid="bot"]')).to_be_visible(timeout=60_000)
        expect(message).to_be_editable(timeout=120_000)  # the box is locked until the reply is complete
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        lengths = page.evaluate("window.replyLengths")
        assert len(lengths) >= 3 and lengths[0] < lengths[-1] == max(lengths), lengths  # it grew while we watched

        page.get_by_role("button", name="Clear").click()
        expect(page.locator('#chat [data-testid="bot"]')).to_have_count(0)
        expect(page.locator('#chat [data-testid="user"]')).to_have_count(0)
        browser.close()
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'serve.png'}")
