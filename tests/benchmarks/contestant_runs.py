"""Running `benchmarks.throughput` at a tiny size for the contestant tests."""

import contextlib
import io
import json

from benchmarks import throughput

TINY = [
    "--size",
    "tiny",
    "--features",
    "256",
    "--layers",
    "0",
    "3",
    "--ref-features",
    "1",
    "--batch",
    "1",
    "--seq",
    "16",
    "--quiet",
]


def run(argv, tmp_path, capsys=None):
    """Exit code, printed report and JSON of a tiny throughput run with `argv` added (later
    arguments win). The report is read through `capsys`, or captured here without it (for a
    module-scoped run)."""
    path = tmp_path / "throughput.json"
    if capsys is None:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = throughput.main(TINY + argv + ["--out", str(path)])
        text = printed.getvalue()
    else:
        code = throughput.main(TINY + argv + ["--out", str(path)])
        text = capsys.readouterr().out
    return code, text, json.loads(path.read_text())
