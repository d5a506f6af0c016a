"""`benchmarks.paper_job`: the list check that gates its ratios, and the per-layer summary."""

from benchmarks.paper_job import check_lists, summarize

IDS = list(range(25))


def _theirs(seconds, top=IDS):
    return [{"feature": 7, "seconds": seconds, "top_ids": top, "bottom_ids": IDS[::-1]}]


def _ours(first, second, top=IDS):
    return {
        "path": "per-feature",
        "first_call_seconds": first,
        "seconds": second,
        "top_ids": [top],
        "bottom_ids": [IDS[::-1]],
    }


def test_identical_lists_pass_and_a_swapped_list_fails():
    theirs = {"query_lens_value/0": _theirs(1.0)}
    assert check_lists(theirs, {"query_lens_value/0": _ours(1, 1)})["passed"]
    swapped = [1, 0, *IDS[2:]]  # authors' rows have no scores: no tie may excuse a swap
    report = check_lists(theirs, {"query_lens_value/0": _ours(1, 1, top=swapped)})
    assert not report["passed"]
    assert report["mismatches"] == [{"lens/layer": "query_lens_value/0", "feature": 7, "which": "top"}]


def test_summary_sums_the_contestants_features_and_adds_its_caches():
    cfg = {"layers": (0, 1), "lenses": ("query_lens_value",)}
    contestant = {
        "results": {
            "query_lens_value/0": _theirs(2.0) + _theirs(4.0),
            "query_lens_value/1": _theirs(0.5),
        },
        "cache_seconds": {"value": 1.5},
    }
    ours = {"results": {"query_lens_value/0": _ours(3.0, 0.5), "query_lens_value/1": _ours(0.1, 0.1)}}
    summary = summarize(cfg, contestant, ours)
    layer0 = summary["layers"][0]["query_lens_value"]
    assert layer0["contestant_s"] == 6.0 and layer0["ratio"] == 12.0 and layer0["ratio_first_call"] == 2.0
    assert summary["job"]["contestant_s"] == 8.0 and summary["job"]["qlens_s"] == 3.1
    assert summary["job"]["ratio"] == 8.0 / 3.1
