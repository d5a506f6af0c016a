"""The LLM judge: off unless asked, a clear error without an endpoint, and a round trip with a
fake OpenAI-compatible server on 127.0.0.1 started here (no external network)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from qlens_jax.evaluation.judge import JudgeConfig, JudgeError, build_prompt, judge_scores, parse_score


@pytest.fixture
def server():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            prompt = body["messages"][-1]["content"]
            reply = '{"score": 5, "theme": "animals"}' if '"cat"' in prompt else "I would say 2."
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", received
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_round_trip_with_fake_server(server, monkeypatch):
    url, received = server
    monkeypatch.setenv("QLENS_TEST_JUDGE_KEY", "secret")
    config = JudgeConfig(endpoint=url, model="fake-judge", api_key_env="QLENS_TEST_JUDGE_KEY")
    scores = judge_scores(config, [["cat", "dog"], ["the", "of"]], [["a [[cat]] sat"], []])
    assert scores == [5.0, 2.0]
    assert [r["path"] for r in received] == ["/v1/chat/completions"] * 2
    assert received[0]["auth"] == "Bearer secret"
    assert received[0]["body"]["model"] == "fake-judge" and received[0]["body"]["temperature"] == 0.0
    assert "a [[cat]] sat" in received[0]["body"]["messages"][-1]["content"]


def test_needs_an_endpoint():
    with pytest.raises(JudgeError, match="needs an OpenAI-compatible endpoint"):
        judge_scores(JudgeConfig(endpoint=None), [["a"]])
    with pytest.raises(JudgeError, match="http"):
        judge_scores(JudgeConfig(endpoint="localhost:8000"), [["a"]])
    with pytest.raises(JudgeError, match="QLENS_UNSET_VARIABLE"):
        judge_scores(JudgeConfig(endpoint="http://127.0.0.1:9/v1", api_key_env="QLENS_UNSET_VARIABLE"), [["a"]])


def test_server_failure_is_reported():
    # A closed port on localhost: connection refused, reported with the URL.
    config = JudgeConfig(endpoint="http://127.0.0.1:9/v1", retries=0, timeout_s=2.0)
    with pytest.raises(JudgeError, match="127.0.0.1:9/v1/chat/completions"):
        judge_scores(config, [["a"]])


def test_parse_score():
    assert parse_score('{"score": 4, "theme": "x"}') == 4.0
    assert parse_score("Score: 3") == 3.0
    assert parse_score('{"score": 9}') != parse_score('{"score": 9}')  # NaN: out of range
    assert parse_score("between 2 and 3") != parse_score("between 2 and 3")  # ambiguous
    assert '"Ġcat"' in build_prompt(["Ġcat"])
