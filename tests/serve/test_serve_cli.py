"""`qlens search|serve` (as `python -m qlens_jax.cli`), as processes."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from qlens_jax.serve.page import REQUEST_HEADER
from qlens_jax.serve.reverse import ReverseLookup
from test_app import snapshot

ROOT = Path(__file__).resolve().parents[2]


def qlens(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "qlens_jax.cli", *args], capture_output=True, text=True, env=env, timeout=300, **kwargs
    )


def get_json(url: str, timeout: float = 5):
    """The JSON answer of `url`, asked as the page asks (with its header)."""
    with urllib.request.urlopen(
        urllib.request.Request(url, headers={REQUEST_HEADER: "test"}), timeout=timeout
    ) as response:
        return json.load(response)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_search_prints_the_ranking(serve_run):
    result = qlens("search", str(serve_run[0]), "--promotes", " the", "--top", "4", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["hits"] == ReverseLookup(serve_run[0]).lookup(" the", "value", top=4)["hits"]
    table = qlens("search", str(serve_run[0]), "--activated-by", " the", "--dictionary", "transcoder-40", "--top", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "Query Lens key score of ' the'" in lines[0] and len(lines) == 5
    assert all(line.split()[-1].startswith("transcoder-40/1/") for line in lines[2:])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--promotes", " the river"], "is 6 tokens, not one: the tokenizer splits it into ' the'"),
        (["--promotes", " the", "--dictionary", "nope"], "--dictionary 'nope': not a dictionary of this run"),
        (["--activated-by", " the", "--top", "0"], "--top 0: must be between"),
    ],
)
def test_search_errors_are_one_line_and_exit_2(serve_run, args, message):
    result = qlens("search", str(serve_run[0]), *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_search_and_serve_refuse_a_folder_that_is_not_a_run(tmp_path):
    for command in (["search", str(tmp_path), "--promotes", "x"], ["serve", str(tmp_path)]):
        result = qlens(*command)
        assert result.returncode == 2 and "not a qlens run folder" in result.stderr


def test_serve_binds_127_0_0_1_says_so_and_never_writes_into_dir(serve_run):
    before = snapshot(serve_run[0])
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-m", "qlens_jax.cli", "serve", str(serve_run[0]), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as server:
        try:
            ask_the_server(server, port)
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert snapshot(serve_run[0]) == before


def ask_the_server(server, port) -> None:
    """The started server says where it listens, answers there, and listens on 127.0.0.1 only."""
    first = server.stdout.readline()
    assert f"at http://127.0.0.1:{port}/ (bound to 127.0.0.1, this machine only)" in first
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            run = get_json(base + "/api/run")
            break
        except urllib.error.URLError:
            time.sleep(0.1)
    assert run["status"] == "complete"
    reverse = get_json(base + "/api/reverse?token=%20the&top=3", timeout=120)
    assert len(reverse["hits"]) == 3
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(base + "/api/feature?dictionary=0&feature=abc", timeout=5)
    with bad.value as error:
        assert error.code == 400 and set(json.load(error)) == {"error"}
    listening = [
        line for line in Path("/proc/net/tcp").read_text().splitlines()[1:] if line.split()[1].endswith(f":{port:04X}")
    ]
    assert listening and all(line.split()[1].startswith("0100007F:") for line in listening)  # 127.0.0.1 only
