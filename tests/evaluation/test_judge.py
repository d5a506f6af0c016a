"""The LLM judge: off unless asked, a clear error without an endpoint, and a round trip with a
fake OpenAI-compatible server on 127.0.0.1 started here (no external network)."""

import pytest

from fake_judge import fake_judge
from qlens_jax.evaluation.judge import (
    JudgeConfig,
    JudgeError,
    build_prompt,
    estimate,
    judge_scores,
    paper_judge,
    parse_score,
)


@pytest.fixture
def server():
    def reply(body, n):
        prompt = body["messages"][-1]["content"]
        return 200, '{"score": 5, "theme": "animals"}' if '"cat"' in prompt else "I would say 2."

    with fake_judge(reply) as served:
        yield served


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
    assert parse_score('{"Score": 9, "Summary": "x"}', "0-10") == 9.0 and parse_score("0", "0-10") == 0.0
    assert parse_score('{"score": 11}', "0-10") != parse_score('{"score": 11}', "0-10")  # NaN: out of range


def test_the_paper_judge_sends_tokens_only_without_sampling_parameters():
    with fake_judge(lambda body, n: (200, '{"Score": 7, "Summary": "animals", "Explanation": "most"}')) as (
        url,
        received,
    ):
        scores = judge_scores(paper_judge(url), [[" cat", " dog"]], [["a [[cat]] sat"]])
    assert scores == [7.0]
    body = received[0]["body"]
    assert body["model"] == "gpt-5-nano" and "temperature" not in body and "max_tokens" not in body
    assert body["messages"][-1]["content"] == "Tokens:  cat,  dog"  # joined with ", ", no contexts
    assert "0 to 10" in body["messages"][0]["content"]
    custom = paper_judge(url, system_prompt="my rubric")
    assert estimate(custom, [["a", "b"]] * 3)["requests"] == 3
    assert estimate(custom, [["a"]])["input_tokens"] < estimate(paper_judge(url), [["a"]])["input_tokens"]


def test_a_refused_parameter_gives_the_endpoints_message_and_keeps_finished_scores():
    def reply(body, n):
        if n == 2:
            return 400, "Unsupported parameter: 'temperature' is not supported with this model."
        return 200, '{"score": 4}'

    with fake_judge(reply) as (url, received):
        with pytest.raises(
            JudgeError, match=r"refused the request \(HTTP 400\): Unsupported parameter: 'temperature'"
        ) as caught:
            judge_scores(JudgeConfig(endpoint=url, retries=2), [["a"], ["b"], ["c"], ["d"]])
    assert len(received) == 3  # a 4xx is not retried, and nothing is sent after it
    assert caught.value.scores[:2] == [4.0, 4.0] and all(s != s for s in caught.value.scores[2:])
