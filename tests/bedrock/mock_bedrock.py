"""A mock Amazon Bedrock for the integration tests.

It answers per credential from a script, and checks every SigV4 signature with botocore's
own signer (an implementation independent of the bridge's), answering 403
InvalidSignatureException on a mismatch. Every request is recorded as one JSON line.

Usage: mock_bedrock.py CONFIG.json LOG.jsonl   (prints the port it listens on)

CONFIG: {"credentials": {ACCESS_KEY_ID: {"secret": ..., "token": ... or null}},
         "api_keys": [...],
         "replies": {ACCESS_KEY_ID or API_KEY or "default": [REPLY, ...]}}
A credential's replies are used in order; the last one repeats. A REPLY is one of
  {"ok": true}                          the operation's answer (invoke, converse, streams)
  {"error": TYPE, "status": N, "message": "..."}
  {"cut": N}                            a stream that breaks after N frames
  {"cut_mid_frame": N}                  a stream that breaks inside frame N+1
"""

import base64
import json
import re
import socket
import struct
import sys
import threading
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

CONFIG = json.load(open(sys.argv[1]))
LOG = open(sys.argv[2], "a", buffering=1)
LOCK = threading.Lock()
SERVED = {}

AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<id>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?"
    r"Signature=(?P<signature>[0-9a-f]+)"
)


def frame(headers, payload):
    """One event-stream frame (test side only: botocore's decoder checks it)."""
    encoded = b""
    for name, value in headers.items():
        raw = value.encode()
        encoded += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw
    total = 16 + len(encoded) + len(payload)
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message) & 0xFFFFFFFF)


def event(kind, document):
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps(document).encode())


def invoke_answer(who):
    return {
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [{"type": "text", "text": f"hello from {who}"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 11, "output_tokens": 7},
    }


def invoke_stream_frames(who):
    events = [
        {"type": "message_start", "message": {**invoke_answer(who), "content": [],
                                               "usage": {"input_tokens": 11, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello "}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": f"from {who}"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
        {"type": "message_stop"},
    ]
    return [
        event("chunk", {"bytes": base64.b64encode(json.dumps(e).encode()).decode()})
        for e in events
    ]


def converse_answer(who):
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": f"hello from {who}"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 11, "outputTokens": 7, "totalTokens": 18},
        "metrics": {"latencyMs": 1},
    }


def converse_stream_frames(who):
    return [
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hello "}}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": f"from {who}"}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "end_turn"}),
        event("metadata", {"usage": {"inputTokens": 11, "outputTokens": 7, "totalTokens": 18},
                           "metrics": {"latencyMs": 1}}),
    ]


def verify(handler, body):
    """(who, error): the credential id or API key, or why the request is refused."""
    authorization = handler.headers.get("authorization", "")
    if authorization.startswith("Bearer "):
        key = authorization[len("Bearer "):]
        if key in CONFIG.get("api_keys", []):
            return key, None
        return None, ("UnrecognizedClientException", 403, "The security token included in the request is invalid.")
    match = AUTH.match(authorization)
    if not match:
        return None, ("MissingAuthenticationTokenException", 403, "Missing Authentication Token")
    who = match["id"]
    known = CONFIG["credentials"].get(who)
    if known is None:
        return None, ("UnrecognizedClientException", 403, "The security token included in the request is invalid.")
    if known.get("token") and handler.headers.get("x-amz-security-token") != known["token"]:
        return None, ("UnrecognizedClientException", 403, "The security token included in the request is invalid.")
    host = handler.headers.get("host")
    request = AWSRequest(method=handler.command, url=f"http://{host}{handler.path}", data=body)
    for name in match["signed"].split(";"):
        request.headers[name] = handler.headers.get(name, "")
    request.context["timestamp"] = handler.headers.get("x-amz-date", "")
    signer = SigV4Auth(Credentials(who, known["secret"], known.get("token")), match["service"], match["region"])
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if match["service"] != "bedrock" or expected != match["signature"]:
        return None, ("InvalidSignatureException", 403,
                      "The request signature we calculated does not match the signature you provided.")
    return who, None


def next_reply(who):
    with LOCK:
        replies = CONFIG["replies"].get(who) or CONFIG["replies"].get("default") or [{"ok": True}]
        index = SERVED.get(who, 0)
        SERVED[who] = index + 1
        return replies[min(index, len(replies) - 1)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        who, refused = verify(self, body)
        record = {
            "method": self.command,
            "path": self.path,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
            "who": who,
            "signature_ok": refused is None,
        }
        LOG.write(json.dumps(record) + "\n")
        if refused:
            return self.error(*refused)
        reply = next_reply(who)
        if "error" in reply:
            return self.error(reply["error"], reply.get("status", 400), reply.get("message", "mock error"))
        path = urllib.parse.urlsplit(self.path).path
        if not path.startswith("/model/"):
            return self.json(200, {"inferenceProfileSummaries": [], "modelSummaries": []})
        operation = path.rstrip("/").rsplit("/", 1)[-1]
        if operation == "invoke":
            return self.json(200, invoke_answer(who))
        if operation == "converse":
            return self.json(200, converse_answer(who))
        if operation == "count-tokens":
            return self.json(200, {"inputTokens": 11})
        frames = invoke_stream_frames(who) if operation == "invoke-with-response-stream" else converse_stream_frames(who)
        self.stream(frames, reply)

    def error(self, kind, status, message):
        payload = json.dumps({"message": message}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("x-amzn-ErrorType", f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def json(self, status, document):
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def stream(self, frames, reply):
        self.send_response(200)
        self.send_header("content-type", "application/vnd.amazon.eventstream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        cut = reply.get("cut", reply.get("cut_mid_frame"))
        for index, data in enumerate(frames):
            if cut is not None and index == cut:
                if "cut_mid_frame" in reply:
                    self.chunk(data[: len(data) // 2])
                self.wfile.flush()
                # A reset, not a clean end: the answer broke off.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                return
            self.chunk(data)
        self.wfile.write(b"0\r\n\r\n")

    def chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
