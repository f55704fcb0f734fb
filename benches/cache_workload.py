"""A Claude Code-like workload through `aibridge serve`, against a mock Anthropic that keeps a
prompt cache per key, to show what session affinity saves.

50 sessions x 20 turns; each turn's prompt is the whole conversation so far (with
`cache_control`), so it grows. The mock answers like Anthropic: a turn whose prefix this key
saw within 5 minutes reads it from the cache (0.1x), the rest is written to it (1.25x); on
any other key the whole prompt is written again. Halfway, a key in use answers 429 once
(Retry-After 30 s: it stays out for the rest of the run).

Usage: cache_workload.py AIBRIDGE_BINARY   (prints one markdown table)
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SESSIONS, TURNS = 50, 20
KEYS = [f"sk-ant-cache-{n}-000000000000000000000" for n in range(3)]
BASE_TOKENS, TURN_TOKENS, OUTPUT_TOKENS = 2000, 600, 200
PRICE = {"input": 1.0, "cache_write": 1.25, "cache_read": 0.1, "output": 5.0}


class Mock:
    """Per key: session -> (turns cached, when). One key may be told to answer 429 once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.cache = {key: {} for key in KEYS}
        self.totals = {kind: 0 for kind in PRICE}
        self.turn_keys = {}  # (session, turn) -> key that answered
        self.throttle_once = None

    def answer(self, key, body):
        session = body["metadata"]["user_id"]
        turn = body["turn"]
        prompt = BASE_TOKENS + TURN_TOKENS * turn
        with self.lock:
            if self.throttle_once == key:
                self.throttle_once = None
                return 429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
            cached_turns, seen = self.cache[key].get(session, (-1, 0))
            fresh = time.time() - seen < 300
            read = BASE_TOKENS + TURN_TOKENS * cached_turns if fresh and cached_turns >= 0 else 0
            write = prompt - read
            self.cache[key][session] = (turn, time.time())
            usage = {"input_tokens": 0, "cache_read_input_tokens": read,
                     "cache_creation_input_tokens": write, "output_tokens": OUTPUT_TOKENS}
            for kind, count in (("input", 0), ("cache_read", read), ("cache_write", write),
                                ("output", OUTPUT_TOKENS)):
                self.totals[kind] += count
            self.turn_keys[(session, turn)] = key
        return 200, {"id": "msg", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                     "content": [{"type": "text", "text": "ok"}], "usage": usage}


def serve_mock(mock):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            status, answer = mock.answer(self.headers["x-api-key"], body)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            if status == 429:
                self.send_header("retry-after", "30")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(binary, strategy, affinity):
    mock = Mock()
    upstream = serve_mock(mock)
    port = free_port()
    with tempfile.TemporaryDirectory() as home:
        config = os.path.join(home, "config.toml")
        keys = ", ".join(f'"{key}"' for key in KEYS)
        with open(config, "w") as file:
            file.write(f'listen = "127.0.0.1:{port}"\n[providers.anthropic]\n'
                       f'base_url = "http://127.0.0.1:{upstream.server_address[1]}"\n'
                       f'keys = [{keys}]\nstrategy = "{strategy}"\naffinity = "{affinity}"\n'
                       f'max_wait = "0s"\n')
        bridge = subprocess.Popen([binary, "serve", "--no-state"], env={**os.environ, "AIBRIDGE_CONFIG": config,
                                  "HOME": home}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            url = f"http://127.0.0.1:{port}/anthropic/v1/messages"
            for turn in range(TURNS):
                if turn == TURNS // 2:
                    # A key in use: the one that served the first session's last turn.
                    mock.throttle_once = mock.turn_keys[("session-0", turn - 1)]
                # Sessions take their turns together, as concurrent agents do.
                for session in range(SESSIONS):
                    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "turn": turn,
                            "metadata": {"user_id": f"session-{session}"},
                            "system": [{"type": "text", "text": "agent",
                                        "cache_control": {"type": "ephemeral"}}],
                            "messages": [{"role": "user", "content": "x"}]}
                    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                                     headers={"content-type": "application/json"})
                    urllib.request.urlopen(request).read()
        finally:
            bridge.terminate()
            bridge.wait()
            upstream.shutdown()
    return summarize(mock, strategy, affinity)


def summarize(mock, strategy, affinity):
    totals = mock.totals
    prompt = totals["input"] + totals["cache_read"] + totals["cache_write"]
    cost = sum(PRICE[kind] * count for kind, count in totals.items()) / 1_000_000
    same, later, moves = 0, 0, 0
    for session in range(SESSIONS):
        keys = [mock.turn_keys[(f"session-{session}", turn)] for turn in range(TURNS)]
        for previous, current in zip(keys, keys[1:]):
            later += 1
            same += previous == current
            moves += previous != current
    first_keys = {mock.turn_keys[(f"session-{session}", 0)] for session in range(SESSIONS)}
    return (f"| {strategy} | {affinity} | {totals['cache_read'] / prompt:.1%} | {cost:.2f} | "
            f"{same / later:.1%} | {moves} | {len(first_keys)} |")


def main():
    binary = sys.argv[1]
    print("| strategy | affinity | cache-read share of prompt tokens | cost (M input-token units) | "
          "turns on the previous turn's key | key changes | keys the sessions started on |")
    print("|---|---|---|---|---|---|---|")
    for strategy in ("ordered", "round-robin"):
        for affinity in ("off", "session"):
            print(run(binary, strategy, affinity), flush=True)


if __name__ == "__main__":
    main()
