"""`qlens signatures --dictionary CLT_FOLDER`: a circuit-tracer cross-layer transcoder folder is one
cross-layer dictionary (one `clt-{width}` per read layer); the Parquet output equals
`qlens_jax.query_lens` on the run's sample with the folder loaded whole, and differs from the
same folder loaded per layer on the value side."""

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

import converters
import qlens_jax
from clt_files import write_clt_folder
from qlens_jax.cli import main
from qlens_jax.corpus import load_token_sample
from world import base_args, drop

LENSES = ["query_lens_value", "logit_lens_value", "query_lens_key"]


def test_clt_folder_is_one_cross_layer_dictionary(world, tmp_path):
    folder = write_clt_folder(tmp_path / "clt", 3, world.d_model, 40)
    out = tmp_path / "out"
    extra = ["--dictionary", str(folder), "--lenses", ",".join(LENSES), "--features", "0-5", "--path", "per-feature"]
    assert main(drop(base_args(world, out), "--dictionary") + extra + ["--layers", "0,1"]) == 0
    table = pq.read_table(out / "signatures.parquet")
    tokens, mask = load_token_sample(out / "sample.npy")
    model = converters.load_model(world.model)
    whole = [d for d in converters.load_dictionaries(folder, model) if d.layer in (0, 1)]
    expected = qlens_jax.query_lens(
        model, whole, tokens, mask, lenses=LENSES, features=range(6), k=25, path="per-feature"
    )
    own = converters.load_dictionary(folder, model, layer=0, cross_layer=False)
    own_value = qlens_jax.query_lens(
        model, own, tokens, mask, lenses=["query_lens_value"], features=range(6), k=25, path="per-feature"
    ).get("query_lens_value")
    assert set(table["dictionary"].to_pylist()) == {"clt-40"}
    for t in expected:
        rows = table.filter(pc.and_(pc.equal(table["lens"], t.lens), pc.equal(table["layer"], t.layer)))
        np.testing.assert_array_equal(np.asarray(rows["top_ids"].to_pylist()), t.top_ids)
        if t.lens == "query_lens_value" and t.layer == 0:
            assert not np.array_equal(t.top_ids, own_value.top_ids)
