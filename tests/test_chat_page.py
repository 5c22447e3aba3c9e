"""The chat page in a real browser: headless Chromium driven over the DevTools protocol.

Types a question, waits for the streamed answer to appear, saves a screenshot, then checks
that the stop button ends a long answer and frees its batch row.
"""

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.server_util import MODEL_ID, metrics, shared_server, wait_for

websocket = pytest.importorskip("websocket", reason="websocket-client is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


class Browser:
    """Just enough of the Chrome DevTools protocol: evaluate JavaScript, type, screenshot."""

    def __init__(self, profile: Path) -> None:
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-allow-origins=*",
             "--window-size=1000,800", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        port = wait_for(lambda: port_file.exists() and port_file.read_text().split("\n")[0], timeout=60)
        pages = wait_for(lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json()
                                  if t["type"] == "page"], timeout=30)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def type_and_enter(self, text: str) -> None:
        self.js("document.getElementById('input').focus()")
        self.call("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        """Stop Chromium and all its helper processes (its own session), so that none still
        writes into the profile folder when the fixture removes it."""
        try:
            self.ws.close()
        finally:
            group = self.process.pid
            os.killpg(group, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                pass
            os.killpg(group, signal.SIGKILL)
            self.process.wait()
            wait_for(lambda: not _group_alive(group), timeout=30)


def _group_alive(group: int) -> bool:
    """Whether a process of this group still runs (zombies, which write nothing, don't count:
    a container's init may leave them unreaped)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            return True
    return False


@pytest.fixture(scope="module")
def server(smollm2_path):
    return shared_server(smollm2_path)


@pytest.fixture()
def browser():
    with tempfile.TemporaryDirectory(prefix="llamaherd-chromium-") as profile:
        b = Browser(Path(profile))
        try:
            yield b
        finally:
            b.close()


def open_chat_page(browser: Browser, url: str) -> None:
    browser.call("Page.navigate", url=url + "/")
    # the page has loaded and asked the server for its model (tolerates the old document meanwhile)
    wait_for(lambda: browser.js("(document.getElementById('model') || {}).textContent") == MODEL_ID, timeout=30)


LAST_ANSWER = "(() => { const a = document.querySelectorAll('.msg.assistant'); const m = a[a.length - 1];" \
              " return m ? [m.textContent, m.dataset.streaming] : null; })()"


def test_the_chat_page_streams_an_answer(server, browser, tmp_path):
    open_chat_page(browser, server.url)
    # an answer of dozens of tokens: a one-line one can arrive whole, in one read of the stream
    browser.js("document.getElementById('max-tokens').value = '48'; document.getElementById('temperature').value = '0'")
    # The page records the answer's text at every change while it streams: polling from here
    # missed a short answer that streamed in between two polls.
    browser.js("window.seenWhileStreaming = []; new MutationObserver(() => {"
               " const a = document.querySelectorAll('.msg.assistant'); const m = a[a.length - 1];"
               " if (m && m.dataset.streaming === 'true' && m.textContent) window.seenWhileStreaming.push(m.textContent);"
               " }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true})")
    browser.type_and_enter("Tell me about the capital of France.")

    def answered():
        state = browser.js(LAST_ANSWER)
        return state if state and state[1] == "false" else None

    text, _ = wait_for(answered, timeout=180, interval=0.05)
    screenshot = Path(os.environ.get("LLAMAHERD_SCREENSHOT_DIR", tmp_path)) / "chat_page.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    browser.screenshot(screenshot)
    assert text.strip(), "no answer text appeared"
    seen_while_streaming = browser.js("window.seenWhileStreaming")
    # piece by piece: texts that grew while the answer streamed, before it was whole
    assert seen_while_streaming and len(seen_while_streaming[0]) < len(text), "the answer did not appear piece by piece"
    assert browser.js("document.querySelectorAll('.msg.user').length") == 1
    assert screenshot.stat().st_size > 1000

    # The conversation is kept: a second question is sent with the first exchange.
    before = metrics(server.url)["llamaherd_prompt_tokens_total"]
    browser.type_and_enter("And of Italy?")
    wait_for(lambda: (s := browser.js(LAST_ANSWER)) and s[1] == "false" and browser.js(
        "document.querySelectorAll('.msg.assistant').length") == 2, timeout=180, interval=0.05)
    assert metrics(server.url)["llamaherd_prompt_tokens_total"] - before > 40  # history + system prompt


def test_the_stop_button_ends_the_answer_and_frees_the_row(server, browser):
    open_chat_page(browser, server.url)
    # greedy and long (SmolLM2 counts on for hundreds of tokens): still streaming when stopped
    browser.js("document.getElementById('max-tokens').value = '400'; document.getElementById('temperature').value = '0'")
    browser.type_and_enter("Count from 1 to 100, one number per line.")
    wait_for(lambda: (s := browser.js(LAST_ANSWER)) and s[0], timeout=180, interval=0.05)
    assert browser.js("document.getElementById('stop').disabled") is False
    browser.js("document.getElementById('stop').click()")
    wait_for(lambda: browser.js(LAST_ANSWER)[1] == "false", timeout=10)
    wait_for(lambda: metrics(server.url)["llamaherd_running_sequences"] == 0, timeout=10)
    assert browser.js("document.getElementById('send').disabled") is False
