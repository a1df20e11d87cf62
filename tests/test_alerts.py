"""Discord alerts against a real HTTP server on 127.0.0.1 that the test scripts."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from reliability_helpers import train_run

from lm_lightning.callbacks.alerts import DISCORD_LIMIT, DiscordNotifier, split_message


class Webhook:
    """Answers each POST with the next scripted reply: 204, (429, retry_after), 404 or 'hang'."""

    def __init__(self, script: list) -> None:
        self.script, self.requests = list(script), []
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.requests.append((self.path, body["content"]))
                reply = hook.script.pop(0) if hook.script else 204
                if reply == "hang":
                    hook.release.wait(30)
                    return
                if isinstance(reply, tuple):  # (429, retry_after seconds)
                    data = json.dumps({"message": "rate limited", "retry_after": reply[1]}).encode()
                    self.send_response(429)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(reply)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/webhooks/123/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def webhook_factory():
    hooks = []

    def make(script):
        hooks.append(Webhook(script))
        return hooks[-1]

    yield make
    for h in hooks:
        h.close()


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def test_delivers_with_wait_true_and_honours_429_retry_after(webhook_factory):
    hook = webhook_factory([204, (429, 0.3), 204])
    n = DiscordNotifier(hook.url)
    n.send("first")
    n.send("second")
    assert wait_until(lambda: n.sent == 2)
    n.close()
    assert [c for _, c in hook.requests] == ["first", "second", "second"]  # retried after the 429
    assert all(path.endswith("?wait=true") for path, _ in hook.requests)


def test_disables_itself_after_404(webhook_factory, caplog):
    hook = webhook_factory([404])
    n = DiscordNotifier(hook.url)
    n.send("a")
    assert wait_until(lambda: n.disabled)
    n.send("b")
    n.close()
    assert len(hook.requests) == 1
    assert "HTTP 404" in caplog.text and "secret-token" not in caplog.text and "127.0.0.1" not in caplog.text


def test_a_hanging_endpoint_never_blocks_the_caller(webhook_factory):
    hook = webhook_factory(["hang"])
    n = DiscordNotifier(hook.url, timeout=0.5, queue_size=4)
    for i in range(20):  # far more than the queue holds: the extra ones are dropped, not waited for
        n.send(f"m{i}")
    assert not hook.release.is_set()  # all sends returned while the endpoint still hangs
    assert n.dropped >= 15
    assert wait_until(lambda: n.failed >= 1)  # the hung request timed out in the background
    n.close(timeout=2)
    assert "secret-token" not in repr(n)


def test_long_messages_are_split_then_truncated(webhook_factory):
    lines = "\n".join(f"line {i} " + "x" * 90 for i in range(50))  # ~5000 characters
    parts = split_message(lines)
    assert len(parts) == 3 and all(len(p) <= DISCORD_LIMIT for p in parts)
    assert parts[0].startswith("line 0") and parts[1].startswith("line ")
    huge = split_message("y" * 10_000)
    assert len(huge) == 3 and huge[-1].endswith("(truncated)") and all(len(p) <= DISCORD_LIMIT for p in huge)
    hook = webhook_factory([])
    n = DiscordNotifier(hook.url)
    n.send(lines)
    assert wait_until(lambda: n.sent == 3)
    n.close()
    assert all(len(c) <= DISCORD_LIMIT for _, c in hook.requests)


@pytest.mark.slow
def test_a_run_alerts_and_the_url_stays_out_of_every_file(webhook_factory, tmp_path, monkeypatch):
    hook = webhook_factory([])
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", hook.url)
    s = train_run(tmp_path, ["trainer.max_steps=4", "callbacks.alerts.progress_every_n_steps=2",
                             "logger=default", "callbacks.monitoring.plots=true",
                             "+callbacks.stopper._target_=reliability_helpers.StopAt", "+callbacks.stopper.step=4"],
                  run_name="alerts")
    assert s["status"] == "stopped"
    assert wait_until(lambda: len(hook.requests) >= 5)
    texts = [c for _, c in hook.requests]
    assert texts[0].startswith("[alerts] training started at step 0")
    assert any("step 2: loss" in t for t in texts)
    assert any("stop: stopping at step 4" in t for t in texts)
    assert any("training ended at step 4" in t for t in texts)
    # The URL (and its token) is in no config, log, checkpoint or summary.
    for path in (tmp_path / "alerts").rglob("*"):
        if path.is_file():
            assert b"secret-token" not in path.read_bytes(), path
