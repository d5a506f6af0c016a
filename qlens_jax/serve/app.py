"""The web app of `qlens serve`: the page and its JSON API, on Starlette.

    GET /                     the page
    GET /api/run              the run: model, status, lenses, dictionaries
    GET /api/feature          ?dictionary=NAME|INDEX&feature=ID, or ?q=Feature NAME/LAYER/ID
    GET /api/features         ?dictionary=..|layer=..&start=ID&limit=N: a page of features
    GET /api/evaluated        ?dictionary=NAME|INDEX&feature=ID, or ?q=...: what an evaluated run has on
                              the feature (contexts, steered continuations, scores; `--evaluation`)
    GET /api/search           ?token=TEXT[&lens=..][&limit=N&offset=M]: stored top/bottom-k lists
    GET /api/reverse          ?token=TEXT&side=value|key[&dictionary=..][&top=N]: reverse lookup
                              (costly: only with the page's header `X-Qlens-Request`, a few at once)

Every error is answered by its class (`errors.http_status`: 400, 403, 404, 409, 429, 503) with
one line of JSON (`{"error": "..."}`); an unexpected failure is a 500 with one line too, never
a traceback, and the connection stays usable. The app only reads the run folder.
"""

from __future__ import annotations

import contextlib
import logging
import math
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

from qlens_jax.errors import InputError, QlensError
from qlens_jax.evaluation.showcase import model_display_name
from qlens_jax.serve.errors import BusyError, CrossOriginError, NotFoundError, QueryError, http_status
from qlens_jax.serve.evaluated import EvaluatedFeatures
from qlens_jax.serve.page import REQUEST_HEADER, render
from qlens_jax.serve.queries import MAX_PAGE, Queries
from qlens_jax.serve.reverse import MAX_TOP, ReverseLookup
from qlens_jax.serve.rundata import RunData

MAX_PARAM = 1000  # characters of any query parameter
MAX_REVERSE = 4  # reverse lookups running or waiting at once (they run one at a time); more: 429
_log = logging.getLogger("qlens.serve")


def _finite(value):
    """`value` with every non-finite float replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class FiniteJSONResponse(JSONResponse):
    """JSON in which a score that is not finite is `null`: a run written by an older qlens may
    hold NaN scores (runs now stop on them, exit 2), and JSON has no NaN."""

    def render(self, content) -> bytes:
        try:
            return super().render(content)
        except ValueError:  # Starlette renders with allow_nan=False
            return super().render(_finite(content))


def _error(message: str, status: int) -> FiniteJSONResponse:
    return FiniteJSONResponse({"error": " ".join(str(message).split())}, status_code=status)


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

    def __init__(
        self,
        run: RunData,
        vocab: list[str],
        reverse_factory=ReverseLookup,
        index_tokens: bool = True,
        evaluation: EvaluatedFeatures | None = None,
    ):
        self.run = run
        self.evaluation = evaluation
        self.queries = Queries(run, vocab, token_index=index_tokens)
        self._reverse, self._reverse_factory = None, reverse_factory
        self._reverse_lock = threading.Lock()
        self._reverse_slots = threading.BoundedSemaphore(MAX_REVERSE)

    def reverse(self) -> ReverseLookup:
        with self._reverse_lock:
            if self._reverse is None:
                self._reverse = self._reverse_factory(self.run)
            return self._reverse

    def dictionary(self, text: str):
        return self.run.dictionary(text, "dictionary")

    # ---- endpoints -------------------------------------------------------------------------
    def model_name(self) -> str:
        """The model as the page names it: its Hugging Face id or its folder's name, never a path."""
        if self.evaluation is not None and self.evaluation.model:
            return self.evaluation.model
        return model_display_name(self.run.summary()["model"])

    async def page(self, request: Request):
        return HTMLResponse(render(f"Query Lens: {self.model_name()}"))

    async def run_info(self, request: Request):
        indexer = self.queries.indexer
        progress = {
            f"{kind}_index": indexer.progress(kind) if indexer is not None else None for kind in ("feature", "token")
        }
        evaluated = None if self.evaluation is None else len(self.evaluation)
        return FiniteJSONResponse(self.run.summary() | progress | {"evaluated": evaluated})

    async def feature(self, request: Request):
        entry, feature = self._feature_of(request)
        if self.queries.features_indexed():  # 0.1 ms: a hop to a worker thread would cost more
            return FiniteJSONResponse(self.queries.feature(entry, feature))
        return FiniteJSONResponse(await run_in_threadpool(self.queries.feature, entry, feature))

    def _feature_of(self, request: Request):
        query = _text(request, "q", required=False)
        if query is None:
            return self.dictionary(_text(request, "dictionary")), _int(request, "feature")
        parsed = self.run.parse_feature_str(query)
        if parsed is None:
            raise NotFoundError(f"q={query!r}: not a feature of this run (expected Feature NAME/LAYER/ID)")
        return parsed

    async def evaluated(self, request: Request):
        entry, feature = self._feature_of(request)
        if self.evaluation is None:
            raise NotFoundError("this server shows no evaluation: start it with --evaluation EVAL_DIR")
        record = self.evaluation.get(entry.name, entry.layer, feature)
        if record is None:
            raise NotFoundError(f"Feature {entry.name}/{entry.layer}/{feature} was not evaluated")
        return FiniteJSONResponse(record)

    async def features(self, request: Request):
        name, layer = _text(request, "dictionary", required=False), _text(request, "layer", required=False)
        if name is not None:
            entries = [self.dictionary(name)]
        elif layer is not None:
            layer = _int(request, "layer")
            entries = [e for e in self.run.dictionaries if e.layer == layer]
            if not entries:
                raise NotFoundError(f"layer {layer}: no dictionary of this run is at that layer")
        else:
            raise QueryError("give dictionary=NAME or layer=N")
        start, limit = _int(request, "start", 0), _int(request, "limit", 50, 1, MAX_PAGE)
        return FiniteJSONResponse(await run_in_threadpool(self.queries.page, entries, start, limit))

    async def search(self, request: Request):
        token, lens = _text(request, "token"), _text(request, "lens", required=False)
        limit, offset = _int(request, "limit", 50, 1, MAX_PAGE), _int(request, "offset", 0, 0, 10**7)
        return FiniteJSONResponse(await run_in_threadpool(self.queries.token_search, token, lens, limit, offset))

    async def reverse_lookup(self, request: Request):
        _same_origin(request)
        token, side = _text(request, "token"), _text(request, "side", required=False) or "value"
        if side not in ("value", "key"):
            raise QueryError(f"side={side!r}: choose value (promotes) or key (activated-by)")
        name, top = _text(request, "dictionary", required=False), _int(request, "top", 50, 1, MAX_TOP)
        entry = str(self.dictionary(name).index) if name is not None else None
        if not self._reverse_slots.acquire(blocking=False):
            raise BusyError(
                f"busy: {MAX_REVERSE} reverse lookups are running or waiting (they run one at a time); "
                "try again in a few seconds"
            )

        def run():
            try:
                return self.reverse().lookup(
                    token, side, entry, top, names={"token": "token", "top": "top", "dictionary": "dictionary"}
                )
            finally:  # released by the worker, so a client that leaves does not free a slot still in use
                self._reverse_slots.release()

        return FiniteJSONResponse(await run_in_threadpool(run))


def _same_origin(request: Request) -> None:
    """Costly requests come from the page (or a client that means it): they carry the page's
    header, which a page of another site cannot send here without a CORS preflight that this
    server never grants, and a browser's own `Sec-Fetch-Site` / `Origin`, where sent, say this site."""
    if REQUEST_HEADER not in request.headers:
        raise CrossOriginError(
            f"this request needs the header {REQUEST_HEADER} (the page sends it; "
            f"with curl: -H '{REQUEST_HEADER}: 1'), so that other web sites cannot start it"
        )
    site = request.headers.get("sec-fetch-site")
    if site not in (None, "same-origin", "none"):
        raise CrossOriginError(f"a request from another site (Sec-Fetch-Site: {site}) is refused")
    origin, host = request.headers.get("origin"), request.headers.get("host")
    if origin is not None and origin.partition("://")[2] != host:
        raise CrossOriginError(f"a request from another origin ({origin[:100]}) is refused")


async def _qlens_error(request: Request, err: QlensError):
    response = _error(str(err), http_status(err))
    if isinstance(err, BusyError):
        response.headers["Retry-After"] = str(err.retry_after)
    return response


async def _http_error(request: Request, err: HTTPException):
    return _error(err.detail if err.status_code != 404 else f"no such page: {request.url.path}", err.status_code)


class _InternalErrors:
    """Answers an unexpected failure with a 500 of one line (the traceback goes to the log) and
    does not raise it further: the server keeps the connection open for the client's next
    request (Starlette's own handler re-raises, and the server then closes the connection)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as err:  # noqa: BLE001 (the last line of defence: anything unexpected)
            _log.exception("qlens serve: %s %s failed", scope.get("method"), scope.get("path"))
            if started or scope["type"] != "http":
                raise
            await _error(f"internal error ({type(err).__name__}); the server log has the details", 500)(
                scope, receive, send
            )


def create_app(
    run: RunData | str | Path,
    vocab: list[str] | None = None,
    allowed_hosts: list[str] | None = None,
    reverse_factory=ReverseLookup,
    index_tokens: bool = True,
    evaluation: EvaluatedFeatures | str | Path | None = None,
) -> Starlette:
    """The app over run folder `run`. `vocab`: display string per token id (default: the run's
    tokenizer's); `allowed_hosts`: Host headers accepted (default: any); `index_tokens`: build
    the feature and token indexes (`indexer`) in the background while serving (False: queries
    read the files); `evaluation`: an evaluated run (`qlens evaluate`'s folder) to show beside
    the features."""
    run = run if isinstance(run, RunData) else RunData(run)
    run.check_files()  # every signature file reads, with run.json's row counts (RunFileError naming the first that does not)
    if vocab is None:
        vocab = run_vocab(run)
    if evaluation is not None and not isinstance(evaluation, EvaluatedFeatures):
        evaluation = EvaluatedFeatures(evaluation)
    server = Server(run, vocab, reverse_factory, index_tokens, evaluation)
    routes = [
        Route("/", server.page),
        Route("/api/run", server.run_info),
        Route("/api/feature", server.feature),
        Route("/api/features", server.features),
        Route("/api/evaluated", server.evaluated),
        Route("/api/search", server.search),
        Route("/api/reverse", server.reverse_lookup),
    ]
    middleware = [Middleware(_InternalErrors)]
    middleware += [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if server.queries.indexer is not None and index_tokens:
            server.queries.indexer.start()
        yield
        if server.queries.indexer is not None:
            server.queries.indexer.stop()

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={QlensError: _qlens_error, HTTPException: _http_error},
    )
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
