"""Optional interpretability score from an LLM judge behind an OpenAI-compatible API.

Off unless asked for. The user names the endpoint (`base_url`, e.g. `http://localhost:8000/v1`
for a local server; requests go to `{base_url}/chat/completions`) and the model; an API key, if
the server needs one, is read from the environment variable the user names. Nothing is sent
anywhere else, and no request is made without an endpoint (`JudgeError`).

For each (lens, feature) the judge sees the lens's top tokens (decoded strings, in order) and,
when given, a few of the feature's top activating contexts with the most-activated token
marked `[[like this]]`, and rates 1 (no recognizable theme) to 5 (one clear, specific theme) how
well the tokens express one coherent concept. It must answer with JSON `{"score": n, ...}`; a
bare integer 1-5 is accepted too; anything else scores NaN and is counted.
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

SYSTEM = ("You rate how interpretable a feature of a language model is, from a list of tokens that a method "
          "associates with it. Answer with JSON only.")
TEMPLATE = """Tokens associated with one feature (most associated first):
{tokens}
{contexts}
Rate from 1 to 5 how clearly these tokens express one coherent, specific concept:
1 = no recognizable theme, 2 = a vague or partial theme, 3 = a theme with many exceptions,
4 = a clear theme with few exceptions, 5 = one clear, specific theme.
Reply with JSON: {{"score": <1-5>, "theme": "<a few words>"}}"""


class JudgeError(InputError):
    """The judge was asked for without what it needs, or its server failed."""


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to ask. `api_key_env` names an environment variable holding the key."""

    endpoint: str | None
    model: str = "gpt-4o-mini"
    api_key_env: str | None = None
    temperature: float = 0.0
    timeout_s: float = 60.0
    retries: int = 2
    max_tokens: int = 100

    def check(self) -> None:
        if not self.endpoint:
            raise JudgeError("the interpretability score needs an OpenAI-compatible endpoint: give --judge-endpoint URL "
                             "(e.g. http://localhost:8000/v1) and --judge-model NAME")
        if not self.endpoint.startswith(("http://", "https://")):
            raise JudgeError(f"--judge-endpoint {self.endpoint!r}: expected an http(s) URL")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise JudgeError(f"--judge-api-key-env {self.api_key_env}: that environment variable is not set")


def build_prompt(tokens: Sequence[str], contexts: Sequence[str] = ()) -> str:
    shown = ", ".join(json.dumps(t, ensure_ascii=False) for t in tokens)
    context_text = ""
    if contexts:
        context_text = "\nText where the feature is most active (most-activated token in [[ ]]):\n" + "\n".join(f"- {c}" for c in contexts) + "\n"
    return TEMPLATE.format(tokens=shown, contexts=context_text)


def parse_score(text: str) -> float:
    """The 1-5 rating in a reply (JSON `score`, or a lone integer); NaN when there is none."""
    match = re.search(r"\{.*\}", text, re.S)
    if match:
        try:
            value = float(json.loads(match.group(0)).get("score"))
            return value if 1 <= value <= 5 else float("nan")
        except (ValueError, TypeError, AttributeError):
            pass
    numbers = re.findall(r"\b([1-5])\b", text)
    return float(numbers[0]) if len(numbers) == 1 else float("nan")


def _post(config: JudgeConfig, prompt: str) -> str:
    body = json.dumps({
        "model": config.model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
    }).encode()
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
                break
            time.sleep(min(2.0**attempt, 10.0))
    raise JudgeError(f"judge endpoint {url}: request failed ({last})")


def judge_scores(config: JudgeConfig, token_lists: Sequence[Sequence[str]], contexts: Sequence[Sequence[str]] | None = None) -> list[float]:
    """One rating per token list (NaN for unparsable replies)."""
    config.check()
    contexts = contexts or [()] * len(token_lists)
    return [parse_score(_post(config, build_prompt(tokens, ctx))) for tokens, ctx in zip(token_lists, contexts)]
