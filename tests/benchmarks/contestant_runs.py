"""Running `benchmarks.throughput` at a tiny size for the contestant tests."""

import json

from benchmarks import throughput

TINY = ["--size", "tiny", "--features", "256", "--layers", "0", "3", "--ref-features", "1", "--batch", "1", "--seq", "16",
        "--quiet"]


def run(argv, tmp_path, capsys):
    """Exit code, printed report and JSON of a tiny throughput run with `argv` added."""
    path = tmp_path / "throughput.json"
    code = throughput.main(TINY + argv + ["--out", str(path)])
    return code, capsys.readouterr().out, json.loads(path.read_text())
