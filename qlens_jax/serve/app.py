"""The web app of `qlens serve`: the page and its JSON API, on Starlette.

    GET /                     the page
    GET /api/run              the run: model, status, lenses, dictionaries
    GET /api/feature          ?dictionary=NAME|INDEX&feature=ID, or ?q=Feature NAME/LAYER/ID
    GET /api/features         ?dictionary=..|layer=..&start=ID&limit=N: a page of features
    GET /api/search           ?token=TEXT[&lens=..][&limit=N&offset=M]: stored top/bottom-k lists
    GET /api/reverse          ?token=TEXT&side=value|key[&dictionary=..][&top=N]: reverse lookup

Every error is a 4xx answer with one line of JSON (`{"error": "..."}`); an unexpected failure
is a 500 with one line too, never a traceback. The app only reads the run folder.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from qlens_jax.errors import InputError
from qlens_jax.serve.page import render
from qlens_jax.serve.queries import MAX_PAGE, Queries, QueryError
from qlens_jax.serve.reverse import MAX_TOP, ReverseLookup
from qlens_jax.serve.rundata import RunData

MAX_PARAM = 1000  # characters of any query parameter


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def _text(request: Request, name: str, required: bool = True) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        if required:
            raise QueryError(f"missing parameter {name!r}")
        return None
    if len(value) > MAX_PARAM:
        raise QueryError(f"parameter {name!r}: longer than {MAX_PARAM} characters")
    return value


def _int(request: Request, name: str, default: int | None = None, low: int = 0, high: int = 2**62) -> int:
    value = _text(request, name, required=default is None)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise QueryError(f"parameter {name}={value!r}: expected an integer") from None
    if not low <= number <= high:
        raise QueryError(f"parameter {name}={number}: must be between {low} and {high}")
    return number


class Server:
    """What the endpoints share: the run, its queries, and the reverse lookup (loaded on first use)."""

    def __init__(self, run: RunData, vocab: list[str], reverse_factory=ReverseLookup, index_tokens: bool = True):
        self.run = run
        self.queries = Queries(run, vocab, token_index=index_tokens)
        self._reverse, self._reverse_factory = None, reverse_factory
        self._reverse_lock = threading.Lock()

    def reverse(self) -> ReverseLookup:
        with self._reverse_lock:
            if self._reverse is None:
                self._reverse = self._reverse_factory(self.run)
            return self._reverse

    def dictionary(self, text: str):
        try:
            return self.run.dictionary(text)
        except InputError as err:
            raise QueryError(str(err).replace("--dictionary ", "dictionary "), 404) from None

    # ---- endpoints -------------------------------------------------------------------------
    async def page(self, request: Request):
        return HTMLResponse(render(f"Query Lens: {self.run.summary()['model']}"))

    async def run_info(self, request: Request):
        indexer = self.queries.indexer
        progress = {f"{kind}_index": indexer.progress(kind) if indexer is not None else None for kind in ("feature", "token")}
        return JSONResponse(self.run.summary() | progress)

    async def feature(self, request: Request):
        query = _text(request, "q", required=False)
        if query is not None:
            parsed = self.run.parse_feature_str(query)
            if parsed is None:
                raise QueryError(f"q={query!r}: not a feature of this run (expected Feature NAME/LAYER/ID)", 404)
            entry, feature = parsed
        else:
            entry, feature = self.dictionary(_text(request, "dictionary")), _int(request, "feature")
        if self.queries.features_indexed():  # 0.1 ms: a hop to a worker thread would cost more
            return JSONResponse(self.queries.feature(entry, feature))
        return JSONResponse(await run_in_threadpool(self.queries.feature, entry, feature))

    async def features(self, request: Request):
        name, layer = _text(request, "dictionary", required=False), _text(request, "layer", required=False)
        if name is not None:
            entries = [self.dictionary(name)]
        elif layer is not None:
            layer = _int(request, "layer")
            entries = [e for e in self.run.dictionaries if e.layer == layer]
            if not entries:
                raise QueryError(f"layer {layer}: no dictionary of this run is at that layer", 404)
        else:
            raise QueryError("give dictionary=NAME or layer=N")
        start, limit = _int(request, "start", 0), _int(request, "limit", 50, 1, MAX_PAGE)
        return JSONResponse(await run_in_threadpool(self.queries.page, entries, start, limit))

    async def search(self, request: Request):
        token, lens = _text(request, "token"), _text(request, "lens", required=False)
        limit, offset = _int(request, "limit", 50, 1, MAX_PAGE), _int(request, "offset", 0, 0, 10**7)
        return JSONResponse(await run_in_threadpool(self.queries.token_search, token, lens, limit, offset))

    async def reverse_lookup(self, request: Request):
        token, side = _text(request, "token"), _text(request, "side", required=False) or "value"
        if side not in ("value", "key"):
            raise QueryError(f"side={side!r}: choose value (promotes) or key (activated-by)")
        name, top = _text(request, "dictionary", required=False), _int(request, "top", 50, 1, MAX_TOP)
        entry = str(self.dictionary(name).index) if name is not None else None

        def run():
            return self.reverse().lookup(token, side, entry, top)

        return JSONResponse(await run_in_threadpool(run))


async def _input_error(request: Request, err: InputError):
    return _error(str(err), getattr(err, "status", 400))


async def _http_error(request: Request, err: HTTPException):
    return _error(err.detail if err.status_code != 404 else f"no such page: {request.url.path}", err.status_code)


async def _server_error(request: Request, err: Exception):
    return _error(f"internal error ({type(err).__name__}); the server log has the details", 500)


def create_app(run: RunData | str | Path, vocab: list[str] | None = None, allowed_hosts: list[str] | None = None,
               reverse_factory=ReverseLookup, index_tokens: bool = True) -> Starlette:
    """The app over run folder `run`. `vocab`: display string per token id (default: the run's
    tokenizer's); `allowed_hosts`: Host headers accepted (default: any); `index_tokens`: build
    the feature and token indexes (`indexer`) in the background while serving (False: queries
    read the files)."""
    run = run if isinstance(run, RunData) else RunData(run)
    if vocab is None:
        vocab = run_vocab(run)
    server = Server(run, vocab, reverse_factory, index_tokens)
    routes = [
        Route("/", server.page),
        Route("/api/run", server.run_info),
        Route("/api/feature", server.feature),
        Route("/api/features", server.features),
        Route("/api/search", server.search),
        Route("/api/reverse", server.reverse_lookup),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    @contextlib.asynccontextmanager
    async def lifespan(app):
        if server.queries.indexer is not None and index_tokens:
            server.queries.indexer.start()
        yield
        if server.queries.indexer is not None:
            server.queries.indexer.stop()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={InputError: _input_error, HTTPException: _http_error, Exception: _server_error})
    app.state.server = server
    return app


def run_vocab(run: RunData) -> list[str]:
    """The display string of every token id, from the run's tokenizer (as the run wrote them)."""
    import converters
    from qlens_jax.job.inputs import vocab_strings

    options, model = run.manifest["options"], run.manifest["inputs"]["model"]
    source = options.get("tokenizer") or model["path"]
    try:
        tokenizer = converters.load_tokenizer(source)
    except Exception as err:  # noqa: BLE001 (any failure to read it is the same bad input)
        raise InputError(f"{run.path}: cannot load the run's tokenizer {source} ({err})") from None
    return list(vocab_strings(tokenizer, int(model["config"]["vocab_size"])))
