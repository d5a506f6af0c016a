"""Optional interpretability score from an LLM judge behind an OpenAI-compatible API.

Off unless asked for. The user names the endpoint (`base_url`, e.g. `http://localhost:8000/v1`
for a local server; requests go to `{base_url}/chat/completions`) and the model; an API key, if
the server needs one, is read from the environment variable the user names. Nothing is sent
anywhere else, and no request is made without an endpoint (`JudgeError`).

Two rubrics (`JudgeConfig.scale`):
- "1-5" (this project's default): the judge sees the lens's top tokens (decoded strings, in
  order) and, when given, a few of the feature's top activating contexts with the
  most-activated token marked `[[like this]]`, and rates 1 (no recognizable theme) to 5 (one
  clear, specific theme).
- "0-10" (the paper's, appendix K.1; `paper_judge`): tokens only, joined with ", " after
  "Tokens: ", rated 0-10 by topical concentration (the share of the tokens that support one
  dominant theme), with GPT-5-nano, which takes neither `temperature` nor `max_tokens`: a
  parameter set to None is not sent. The system prompt here is this project's wording of that
  rubric; `system_prompt` replaces it (e.g. with the authors' text, to reproduce their runs).
The reply must be JSON with a `score` (or `Score`) in the scale's range, or a lone integer in
range; anything else scores NaN and is counted.

A request the endpoint refuses (an HTTP 4xx, e.g. an unsupported parameter) raises `JudgeError`
with the endpoint's own message; `judge_scores` attaches the scores finished before it
(`JudgeError.scores`), so that a caller can keep them.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from qlens_jax.errors import InputError

SCALES = ("1-5", "0-10")
SYSTEM = (
    "You rate how interpretable a feature of a language model is, from a list of tokens that a method "
    "associates with it. Answer with JSON only."
)
TEMPLATE = """Tokens associated with one feature (most associated first):
{tokens}
{contexts}
Rate from 1 to 5 how clearly these tokens express one coherent, specific concept:
1 = no recognizable theme, 2 = a vague or partial theme, 3 = a theme with many exceptions,
4 = a clear theme with few exceptions, 5 = one clear, specific theme.
Reply with JSON: {{"score": <1-5>, "theme": "<a few words>"}}"""
# The paper's rubric (appendix K.1), in this project's words.
SYSTEM_0_10 = """You judge how interpretable one feature of a language model is. You get the vocabulary tokens
most strongly associated with it (promoted at its output or activating it at its input), ranked,
strongest first. Tokens may be pieces of words: judge the word or concept a piece belongs to.
The same concept in several languages counts as one theme.

Name the dominant theme, then score the topical concentration of the list from 0 to 10: the share
of the tokens that directly support that one theme.
10 or 9: at least 80 % of the tokens; the rest look like noise.
8 or 7: 60 to 79 %; a clear theme with a visible minority of other tokens.
6 to 4: 40 to 59 %; the theme is identifiable, but about half the list is mixed or unrelated.
3 or 2: 20 to 39 %; a weak cluster.
1 or 0: under 20 %, or no specific theme (generic, scattered, punctuation or formatting tokens).
A second theme beside the dominant one does not lower the score by itself. Be strict: the share of
supporting tokens decides the score, not your confidence.

Reply with raw JSON only: {"Score": <integer 0 to 10>, "Summary": "<the theme, or None>",
"Explanation": "<which tokens support it and roughly what share of the list>"}"""
TEMPLATE_0_10 = "Tokens: {tokens}"


class JudgeError(InputError):
    """The judge was asked for without what it needs, or its server failed (`scores`: those
    finished before a failed request, when it came from `judge_scores`)."""

    scores: list[float] | None = None


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to ask. `api_key_env` names an environment variable holding the key."""

    endpoint: str | None
    model: str = "gpt-4o-mini"
    api_key_env: str | None = None
    temperature: float | None = 0.0  # None: not sent
    timeout_s: float = 60.0
    retries: int = 2
    max_tokens: int | None = 100  # None: not sent
    scale: str = "1-5"
    system_prompt: str | None = None  # replaces the scale's own system prompt

    def check(self) -> None:
        if self.scale not in SCALES:
            raise JudgeError(f"--judge-scale {self.scale!r}: choose from {', '.join(SCALES)}")
        if not self.endpoint:
            raise JudgeError(
                "the interpretability score needs an OpenAI-compatible endpoint: give --judge-endpoint URL "
                "(e.g. http://localhost:8000/v1) and --judge-model NAME"
            )
        if not self.endpoint.startswith(("http://", "https://")):
            raise JudgeError(f"--judge-endpoint {self.endpoint!r}: expected an http(s) URL")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise JudgeError(f"--judge-api-key-env {self.api_key_env}: that environment variable is not set")


def paper_judge(endpoint: str | None, api_key_env: str | None = None, system_prompt: str | None = None) -> JudgeConfig:
    """The paper's judge: GPT-5-nano, the 0-10 rubric on tokens only, no `temperature` or `max_tokens` sent."""
    return JudgeConfig(
        endpoint=endpoint,
        model="gpt-5-nano",
        api_key_env=api_key_env,
        temperature=None,
        max_tokens=None,
        scale="0-10",
        system_prompt=system_prompt,
    )


def build_prompt(tokens: Sequence[str], contexts: Sequence[str] = (), scale: str = "1-5") -> str:
    """The user message for one token list (contexts are shown on the 1-5 scale only)."""
    if scale == "0-10":
        return TEMPLATE_0_10.format(tokens=", ".join(tokens))
    shown = ", ".join(json.dumps(t, ensure_ascii=False) for t in tokens)
    context_text = ""
    if contexts:
        context_text = (
            "\nText where the feature is most active (most-activated token in [[ ]]):\n"
            + "\n".join(f"- {c}" for c in contexts)
            + "\n"
        )
    return TEMPLATE.format(tokens=shown, contexts=context_text)


def system_prompt(config: JudgeConfig) -> str:
    if config.system_prompt is not None:
        return config.system_prompt
    return SYSTEM_0_10 if config.scale == "0-10" else SYSTEM


def parse_score(text: str, scale: str = "1-5") -> float:
    """The rating in a reply (JSON `score` / `Score`, or a lone integer in range); NaN when there is none."""
    low, high = (0, 10) if scale == "0-10" else (1, 5)
    match = re.search(r"\{.*\}", text, re.S)
    if match:
        try:
            reply = json.loads(match.group(0))
            value = float(reply.get("score", reply.get("Score")))
            return value if low <= value <= high else float("nan")
        except (ValueError, TypeError, AttributeError):
            pass
    numbers = [n for n in re.findall(r"\b(\d+)\b", text) if low <= int(n) <= high]
    return float(numbers[0]) if len(numbers) == 1 else float("nan")


def estimate(
    config: JudgeConfig, token_lists: Sequence[Sequence[str]], contexts: Sequence[Sequence[str]] | None = None
) -> dict:
    """What judging `token_lists` will send: requests, and input / output tokens estimated at four
    characters a token (output: `max_tokens`, else 100 a reply)."""
    contexts = contexts or [()] * len(token_lists)
    system = len(system_prompt(config))
    chars = sum(system + len(build_prompt(tokens, ctx, config.scale)) for tokens, ctx in zip(token_lists, contexts))
    return {
        "requests": len(token_lists),
        "input_tokens": int(chars / 4),
        "output_tokens": len(token_lists) * (config.max_tokens or 100),
    }


def _refusal(err: urllib.error.HTTPError) -> str:
    """The endpoint's own message in an error reply (OpenAI's `{"error": {"message": ...}}`, else the body)."""
    try:
        text = err.read().decode("utf-8", "replace")
    except OSError:
        return str(err)
    try:
        message = json.loads(text).get("error", {})
        message = message.get("message") if isinstance(message, dict) else message
    except (ValueError, AttributeError):
        message = None
    return " ".join(str(message or text or err).split())[:500]


def _post(config: JudgeConfig, prompt: str) -> str:
    request = {
        "model": config.model,
        "messages": [{"role": "system", "content": system_prompt(config)}, {"role": "user", "content": prompt}],
    }
    if config.temperature is not None:
        request["temperature"] = config.temperature
    if config.max_tokens is not None:
        request["max_tokens"] = config.max_tokens
    body = json.dumps(request).encode()
    headers = {"Content-Type": "application/json"}
    if config.api_key_env:
        headers["Authorization"] = f"Bearer {os.environ[config.api_key_env]}"
    url = config.endpoint.rstrip("/") + "/chat/completions"
    last = None
    for attempt in range(config.retries + 1):
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
                reply = json.loads(response.read().decode())
            return reply["choices"][0]["message"]["content"] or ""
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError, KeyError, IndexError) as err:
            last = err
            if isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500 and err.code != 429:
                raise JudgeError(
                    f"judge endpoint {url} refused the request (HTTP {err.code}): {_refusal(err)}"
                ) from None
            time.sleep(min(2.0**attempt, 10.0))
    raise JudgeError(f"judge endpoint {url}: request failed ({last})")


def judge_scores(
    config: JudgeConfig, token_lists: Sequence[Sequence[str]], contexts: Sequence[Sequence[str]] | None = None
) -> list[float]:
    """One rating per token list (NaN for unparsable replies). On a failed request the
    `JudgeError` carries `scores`: those finished, NaN for the rest."""
    config.check()
    contexts = contexts or [()] * len(token_lists)
    scores: list[float] = []
    for tokens, ctx in zip(token_lists, contexts):
        try:
            scores.append(parse_score(_post(config, build_prompt(tokens, ctx, config.scale)), config.scale))
        except JudgeError as err:
            err.scores = scores + [float("nan")] * (len(token_lists) - len(scores))
            raise
    return scores
