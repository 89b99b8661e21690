"""`posttrain serve`: the web chat page, tested in a real browser (Debian's chromium driven by playwright)."""

import pytest

from posttrain.errors import UserError
from posttrain.inference.serve import conversation_of, page_address

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


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_a_page_on_loopback_needs_no_login(host):
    assert page_address(host, 7860, None).login is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "my-box.local"])
def test_a_page_open_to_other_machines_needs_a_login(host):
    with pytest.raises(UserError, match="needs a login"):
        page_address(host, 7860, None)
    assert page_address(host, 7860, "ana:s3cret:too").login == ("ana", "s3cret:too")


@pytest.fixture
def served_page(serve_process, tiny_model):
    """`posttrain serve tiny-llama2` in its own process, greedy and long-winded; yields the page's URL."""
    return serve_process.start("tiny-llama2", "--temperature", "0", "--max-new-tokens", "300")


def test_a_message_typed_in_chromium_gets_a_streamed_reply(served_page, chromium, tmp_path):
    from playwright.sync_api import expect

    page = chromium.new_page(viewport={"width": 1280, "height": 900})
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
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'serve.png'}")
