"""`qlens channels` end to end on the CLI tests' tiny world (saved model, sae_lens folders, text corpus)."""

import csv
import json

import pytest

from qlens_jax.channels.checkpoint import load_maps
from qlens_jax.cli import build_parser, main as qlens_main
from world import build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("channels-world"))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv):
    return qlens_main(["channels", *argv])


def channel_args(world, out, *extra):
    args = [
        "--model",
        str(world.model),
        "--corpus",
        str(world.corpus_text),
        "--num-samples",
        "6",
        "--max-length",
        "10",
        "--features-per-layer",
        "30",
        "--rank",
        "4",
        "--permutations",
        "99",
        "--quiet",
        "--out",
        str(out),
    ]
    for d in world.dictionaries:
        args += ["--dictionary", str(d)]
    return args + list(extra)


def test_channels_command_writes_tables_figures_and_maps(world, tmp_path, capsys):
    out = tmp_path / "run[1]"  # a glob character in the path: the maps' checkpoint takes it literally
    assert main(channel_args(world, out, "--train", "--epochs", "30")) == 0
    assert "4 maps of rank 4" in capsys.readouterr().out
    for name in (
        "channels.md",
        "fit_metrics.csv",
        "overlaps.csv",
        "summary.json",
        "sample.npy",
        "overlap_matrix.png",
        "overlap_groups.png",
        "overlap_distance.png",
        "fit_quality.png",
        "training_curves.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rank"] == 4 and summary["maps"] == ["0->1", "0->2", "2->2", "1->2"]
    assert set(summary["methods"]) == {"closed_form", "trained", "shuffled_control", "response_subspace"}
    rows = read_csv(out / "fit_metrics.csv")
    assert len(rows) == 12 and {r["method"] for r in rows} == {"closed_form", "trained", "shuffled_control"}
    closed = {r["map"]: float(r["train_mse"]) for r in rows if r["method"] == "closed_form"}
    trained = {r["map"]: float(r["train_mse"]) for r in rows if r["method"] == "trained"}
    assert all(closed[k] <= trained[k] for k in closed)
    assert len(read_csv(out / "overlaps.csv")) == 6
    report = (out / "channels.md").read_text()
    assert (
        "## Fit quality" in report
        and "![overlap_groups](overlap_groups.png)" in report
        and "partly follows from the construction" in report
    )
    maps, meta, ids = load_maps(out / "maps")
    assert meta["methods"] == ["closed_form", "trained", "shuffled_control"] and len(maps["closed_form"]) == 4
    assert maps["closed_form"][0].A.shape == (4, world.d_model) and maps["closed_form"][0].B.shape == (world.d_model, 4)
    assert sorted(ids) == [0, 1, 2] and all(len(v) == 30 for v in ids.values())


def test_same_command_gives_the_same_numbers(world, tmp_path):
    for name in ("a", "b"):
        assert main(channel_args(world, tmp_path / name, "--no-plots")) == 0
    assert (tmp_path / "a" / "fit_metrics.csv").read_bytes() == (tmp_path / "b" / "fit_metrics.csv").read_bytes()
    assert (tmp_path / "a" / "overlaps.csv").read_bytes() == (tmp_path / "b" / "overlaps.csv").read_bytes()


def test_bad_inputs_are_one_line_errors(world, tmp_path, capsys):
    out = tmp_path / "full"
    out.mkdir()
    (out / "x").write_text("")
    assert main(channel_args(world, out)) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(channel_args(world, tmp_path / "r", "--rank", "0")) == 2
    assert "--rank 0" in capsys.readouterr().err


def test_qlens_registers_channels(world, tmp_path, capsys):
    args = build_parser().parse_args(
        ["channels", "--model", "m", "--dictionary", "d", "--out", "o", "--token-sample", "s.npy"]
    )
    assert args.command == "channels" and callable(args._run) and args.rank is None and args.features_per_layer == 1000
    assert args.precision == "float32" and args.corpus_encoding == "utf-8"
    assert main(channel_args(world, tmp_path / "r", "--validation-fraction", "1.5")) == 2
    assert "qlens channels: error: --validation-fraction 1.5" in capsys.readouterr().err


def test_bad_bytes_need_their_encoding(world, tmp_path, capsys):
    corpus = tmp_path / "bytes.txt"
    corpus.write_bytes(bytes(range(256)) * 64)

    def args(out, *extra):
        return [
            a if a != str(world.corpus_text) else str(corpus)
            for a in channel_args(world, tmp_path / out, "--no-plots", *extra)
        ]

    assert main(args("a")) == 2
    err = capsys.readouterr().err
    assert f"--corpus {corpus}: not valid utf-8 text: byte 128 (0x80)" in err and "--corpus-encoding" in err
    assert main(args("b", "--corpus-encoding", "latin-1")) == 0
    assert main(args("c", "--corpus-encoding", "latin-1", "--precision", "tf32")) == 2
    assert "tf32 needs a GPU" in capsys.readouterr().err
