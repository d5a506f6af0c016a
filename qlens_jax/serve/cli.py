"""`qlens serve` and `qlens search`: options and runners (`configure(parser) -> runner(args, argv)`)."""

from __future__ import annotations

import argparse

from qlens_jax.errors import InputError

SERVE_HELP = "browse and search a run of any size in a local web app (JSON API + page)"
SERVE_DESCRIPTION = (
    "Serve a run folder (finished, or still running: its shards so far) at http://HOST:PORT/: look up\n"
    "features, page through dictionaries, search tokens in the stored top-k / bottom-k lists, and rank\n"
    "every feature by a token's exact Query Lens score (promotes: TOKEN, activated-by: TOKEN). Queries\n"
    "run in DuckDB over the Parquet files; nothing is loaded whole and nothing is written into DIR.\n"
    "Binds 127.0.0.1 unless --host says otherwise."
)
SEARCH_HELP = "rank every feature of a run by a token's exact Query Lens value or key score"
SEARCH_DESCRIPTION = (
    "Reverse lookup: the exact Query Lens score of one token for every feature of every dictionary of\n"
    "the run, from its saved operators and dictionaries, ranked. --promotes TOKEN: value side (which\n"
    "features push the token up); --activated-by TOKEN: key side (which features the token drives).\n"
    "TOKEN must be exactly one token of the run's tokenizer (e.g. ' Paris' with its leading space), or id:N."
)


def configure_serve(parser: argparse.ArgumentParser):
    parser.add_argument(
        "run_dir", metavar="DIR", help="output folder of a `qlens signatures` run (finished or in progress)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    parser.add_argument(
        "--evaluation",
        metavar="EVAL_DIR",
        help="output folder of `qlens evaluate` on this run: show each feature's activating contexts, "
        "steered continuations and scores",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")

    def run(args, argv) -> int:
        from qlens_jax.serve.app import create_app
        from qlens_jax.serve.rundata import RunData
        from qlens_jax.serve.server import bind, serve

        if not 0 < args.port < 65536:
            raise InputError(f"--port {args.port}: must be between 1 and 65535")
        run_data = RunData(args.run_dir)
        local = args.host in ("127.0.0.1", "localhost", "::1")
        hosts = (
            [
                "127.0.0.1",
                "localhost",
                "[::1]",
                f"127.0.0.1:{args.port}",
                f"localhost:{args.port}",
                f"[::1]:{args.port}",
            ]
            if local
            else None
        )
        run_data.check_files()  # a truncated or miscounted signature file: one line naming it, exit 2
        evaluation = None
        if args.evaluation:
            from qlens_jax.serve.evaluated import EvaluatedFeatures

            evaluation = EvaluatedFeatures(args.evaluation)  # a missing or malformed file: one line, exit 2
        sock = bind(args.host, args.port)  # bound before anything is announced: a port in use is one line, exit 2
        app = create_app(run_data, allowed_hosts=hosts, evaluation=evaluation)
        where = (
            "this machine only" if local else "reachable from other machines: anyone who can reach it can read the run"
        )
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"qlens serve: {run_data.path} at http://{shown}:{args.port}/ (bound to {args.host}, {where}); Ctrl-C stops it",
            flush=True,
        )
        serve(app, sock)
        return 0

    return run


def configure_search(parser: argparse.ArgumentParser):
    parser.add_argument("run_dir", metavar="DIR", help="output folder of a finished `qlens signatures` run")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--promotes", metavar="TOKEN", help="rank features by the token's Query Lens value score")
    which.add_argument("--activated-by", metavar="TOKEN", help="rank features by the token's Query Lens key score")
    parser.add_argument(
        "--dictionary", metavar="NAME", help="only this dictionary of the run (NAME, NAME/LAYER or its index)"
    )
    parser.add_argument("--top", type=int, default=50, help="how many features to list (default 50)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def run(args, argv) -> int:
        import json

        from qlens_jax.serve.reverse import ReverseLookup
        from qlens_jax.serve.rundata import RunData

        run_data = RunData(args.run_dir)
        if args.dictionary is not None:
            run_data.dictionary(args.dictionary)
        side, token = ("value", args.promotes) if args.promotes is not None else ("key", args.activated_by)
        result = ReverseLookup(run_data).lookup(token, side, args.dictionary, args.top)
        if args.json:
            print(json.dumps(result))
            return 0
        verb = "promotes" if side == "value" else "is activated by"
        print(
            f"features whose Query Lens {side} score of {result['token']!r} (id {result['token_id']}) is highest "
            f"(which {verb} it), of {result['features_scored']} features, in {result['seconds']} s:"
        )
        print(f"{'rank':>5}  {'score':>11}  feature")
        for hit in result["hits"]:
            print(
                f"{hit['rank']:>5}  {hit['score']:>11.5g}  Feature {hit['dictionary']}/{hit['layer']}/{hit['feature']}"
            )
        return 0

    return run
