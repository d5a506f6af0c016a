"""The reference implementation's feature-sample pickles: read with a restricted unpickler
(anything but its record classes and plain numbers is refused), and usable as --features."""

import dataclasses
import json
import pickle
import sys
import types

import numpy as np
import pyarrow.parquet as pq
import pytest

import converters
import qlens_jax
from qlens_jax.cli import main
from qlens_jax.corpus import load_token_sample
from qlens_jax.errors import InputError
from qlens_jax.io.reference_features import Activation, Feature, read_feature_sample
from world import base_args


def _util_module():
    """A stand-in for the reference's `util` module, as its pickles name it."""
    util = types.ModuleType("util")

    @dataclasses.dataclass
    class Feature:
        model_id: str
        feature: int
        layer: str
        type: str
        activations: list
        sae_id: str
        sae_release: str
        size: str
        steering_cache: dict | None = None

    @dataclasses.dataclass
    class Activation:
        token_values: list
        max_value: float
        min_value: float
        max_value_token_index: int

    for cls in (Feature, Activation):
        cls.__module__, cls.__qualname__ = "util", cls.__name__
        setattr(util, cls.__name__, cls)
    return util


def write_sample(path, records: list[tuple[str, int]], monkeypatch, protocol=pickle.HIGHEST_PROTOCOL):
    """A pickle of util.Feature records at (layer, feature), with numpy values inside."""
    util = _util_module()
    monkeypatch.setitem(sys.modules, "util", util)
    activation = util.Activation([(" the", np.float32(1.5)), (" river", 0.25)], np.float32(1.5), 0.0, np.int64(0))
    features = [
        util.Feature(
            "tiny",
            feature,
            layer,
            "res",
            activations=[activation],
            sae_id=f"{layer}-res-40",
            sae_release="test",
            size="40",
            steering_cache={"alpha": np.asarray([0.5, 1.0])},
        )
        for layer, feature in records
    ]
    path.write_bytes(pickle.dumps(features, protocol=protocol))
    monkeypatch.delitem(sys.modules, "util")
    return path


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_reads_records_without_the_util_module(tmp_path, monkeypatch, protocol):
    path = write_sample(tmp_path / "sample.pkl", [("0", 3), ("2", 17)], monkeypatch, protocol)
    assert "util" not in sys.modules
    refs = read_feature_sample(path)
    assert [(r.layer, r.feature, r.feature_str) for r in refs] == [
        (0, 3, "Feature res-40/0/3"),
        (2, 17, "Feature res-40/2/17"),
    ]


def test_records_become_local_classes(tmp_path, monkeypatch):
    from qlens_jax.io.reference_features import RestrictedUnpickler

    path = write_sample(tmp_path / "sample.pkl", [("1", 5)], monkeypatch)
    with open(path, "rb") as f:
        (record,) = RestrictedUnpickler(f).load()
    assert isinstance(record, Feature) and isinstance(record.activations[0], Activation)
    assert record.activations[0].token_values[0] == (" the", np.float32(1.5))
    assert record.steering_cache["alpha"].tolist() == [0.5, 1.0]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_anything_else_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([_Exploit(marker)]))
    with pytest.raises(InputError, match=r"refusing to load (posix|os)\.system"):
        read_feature_sample(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps([{"layer": "0", "feature": 1}]))
    with pytest.raises(InputError, match="item 0 is a dict, not a util.Feature"):
        read_feature_sample(path)


def test_cli_runs_the_sample_features_and_exports_them(world, tmp_path, monkeypatch):
    """Both SAEs (layers 0 and 2) match by layer; the transcoder at layer 1 gets no feature.
    Feature strings keep the sample's naming so the reference's scripts match our rows."""
    path = write_sample(tmp_path / "sample.pkl", [("2", 17), ("0", 3), ("0", 39), ("2", 17)], monkeypatch)
    out = tmp_path / "run"
    assert main(base_args(world, out, "--features", str(path), "--lenses", "logit_lens_value", "--no-self-check")) == 0
    table = pq.read_table(out / "signatures.parquet")
    assert list(zip(table["layer"].to_pylist(), table["feature"].to_pylist())) == [(0, 3), (0, 39), (2, 17)]
    assert table["feature_str"].to_pylist() == ["Feature res-40/0/3", "Feature res-40/0/39", "Feature res-40/2/17"]
    model = converters.load_model(world.model)
    dictionaries = converters.load_dictionaries([str(d) for d in world.dictionaries[:2]], model)
    tokens, mask = load_token_sample(out / "sample.npy")
    expected = qlens_jax.query_lens(
        model,
        dictionaries,
        tokens,
        mask,
        lenses=("logit_lens_value",),
        features={0: [3, 39], 1: [17]},
        self_check=False,
        memory_budget_gb=1.0,
    )
    assert table["top_ids"].to_pylist() == [ids for t in expected for ids in t.top_ids.tolist()]
    assert main(["export", str(out)]) == 0
    lines = (out / "export" / "logit_lens_value" / "feature_analysis.jsonl").read_text().splitlines()
    assert [json.loads(line)["feature_str"] for line in lines] == table["feature_str"].to_pylist()


def test_features_at_a_layer_without_dictionary_are_an_error(world, tmp_path, monkeypatch, capsys):
    path = write_sample(tmp_path / "sample.pkl", [("0", 3), ("0", 39), ("5", 1)], monkeypatch)
    assert main(base_args(world, tmp_path / "run", "--features", str(path))) == 2
    assert "has features at layer 5, but no --dictionary is at that layer" in capsys.readouterr().err
    # ... unless --layers leaves that layer out on purpose
    assert (
        main(
            base_args(
                world,
                tmp_path / "run",
                "--features",
                str(path),
                "--layers",
                "0",
                "--lenses",
                "logit_lens_value",
                "--no-self-check",
            )
        )
        == 0
    )
