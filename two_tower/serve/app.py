"""The search service: ``create_app(searcher, limits)`` builds a FastAPI app over one loaded ``Searcher``.

| endpoint | what |
|---|---|
| ``GET /search?q=...&k=10`` | one query: ``{query, k, took_ms, hits: [{id, score, text}]}`` |
| ``POST /search`` ``{"queries": [...], "k": 10}`` | a batch, searched with one ``Searcher.search`` call: ``{k, took_ms, results: [{query, hits}]}`` |
| ``GET /health`` | model identity and index identity (from the manifest), corpus size, limits, threads |
| ``GET /`` | the search page (``static/``: no CDN); ``/docs`` (Swagger UI, served locally), ``/openapi.json`` |

Bad input never reaches the searcher and never gets a 500: the request models carry the limits as
constraints (query 1..``max_query_chars`` characters with a letter or digit, ``k`` in 1..``k_max``, 1..``max_batch``
queries, no unknown fields), and every 4xx answer has one JSON shape,
``{"error": "<what is wrong, in one line>", "detail": [{"loc", "msg", "type"}]}``: 422 for a request that
fails validation (including a query the tokenizer finds empty: ``EmptyQueryError``), 413 for a body larger
than a full batch of the longest queries can be, 404/405 for unknown paths and methods.

Concurrency: a search runs on a worker thread, at most ``concurrency`` at once (their own limiter; default:
the CPU cores this process may use); the others wait for a turn on the event loop (ranked by queries, so a query
does not wait behind every batch before it: ``SearchSlots``), which stays free: it
accepts, validates and refuses requests (a JSON body is parsed once, on a worker thread: ``BodyLimit``), and answers
``/health`` and the page, which touch no worker thread,
however many searches are queued (before, every endpoint, dependency and response check shared Starlette's
pool of 40 threads, so under a flood of batches ``/health`` waited 18-43 s behind them and a container's
health check failed). A search's answer is also encoded to JSON on its worker thread. There is no lock,
because nothing a search touches is written after loading: the tokenizer (dict look-ups), the query
tower (eval mode, no buffers updated, run under ``torch.inference_mode``, which is thread-local), the
FAISS index (search on a const index is thread-safe for Flat, HNSW and IVF; search parameters are set
once, at load) and the passages (``pyarrow.Table.take`` on an immutable table). torch and FAISS release
the GIL while they compute, so concurrent searches use the cores. Each search uses ``threads`` CPU
threads: OpenMP thread counts belong to the calling thread, so ``torch.set_num_threads`` and
``faiss.omp_set_num_threads`` are applied in every worker thread (once per thread), not only at start-up.
"""

import asyncio
import contextlib
import heapq
import json
import os
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import faiss
import torch
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, PydanticKnownError
from starlette.exceptions import HTTPException as StarletteHTTPException

from two_tower.core.errors import ConfigError, EmptyQueryError
from two_tower.data.tokenizer import WindowCount
from two_tower.retrieval.index import effective_search_params, saved_search_params
from two_tower.retrieval.search import Searcher

STATIC = Path(__file__).parent / "static"
# A query needs a letter or digit (what the tokenizer reads as a word): "?!", an emoji or a zero-width space are
# refused before any search. Checked by a validator with Python's re, the tokenizer's own reading of \w, and not
# published as a schema pattern: a JSON Schema pattern is an ECMA-262 regex, whose \w is ASCII only (a [^\W_]
# pattern told clients "Ï" and "日本" were invalid), and a class of literal ranges (the one before) holds characters
# above U+FFFF, which a RegExp without the u flag reads as surrogate pairs: "Range out of order in character
# class", so Swagger UI threw and checked nothing. No pattern without flags reads astral letters alike in
# ECMA-262 and Python; the schema says it in words (QUERY_RULE).
WORD = re.compile(r"[^\W_]")
QUERY_RULE = "needs a letter or digit (a character Python's \\w counts, other than _): white space, punctuation and symbols alone are refused (422)"


def _searchable(value: str) -> str:
    """A query with a letter or digit, or pydantic's ``string_pattern_mismatch`` (the error the pattern gave)."""
    if not WORD.search(value):
        raise PydanticKnownError("string_pattern_mismatch", {"pattern": WORD.pattern})
    return value


# The most problems one 4xx answer lists (in ``error`` and ``detail``); the rest are counted ("; and 55,980 more").
MAX_LISTED = 20
# The page and its assets come only from this server; no inline script, so injected markup cannot run.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def check_seconds(name: str, value) -> None:
    """A serving timeout: a number of seconds in (0, 3600], or one ConfigError line naming ``name``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 3600:
        raise ConfigError(f"{name}={value!r}: must be a number of seconds in (0, 3600]")


@dataclass(frozen=True)
class Limits:
    """What a request may ask for (``conf/serve.yaml``)."""

    k: int = 10  # passages per query when the request gives no k
    k_max: int = 100
    max_query_chars: int = 512
    max_batch: int = 64
    body_timeout: float = 10.0  # seconds from a request's headers to the end of its body

    def __post_init__(self):
        for name in ("k_max", "max_query_chars", "max_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r}: must be a whole number >= 1")
        check_seconds("body_timeout", self.body_timeout)
        if not isinstance(self.k, int) or isinstance(self.k, bool) or not 1 <= self.k <= self.k_max:
            raise ConfigError(f"k={self.k!r}: the default k must be a whole number in 1..k_max ({self.k_max})")

    @property
    def max_body_bytes(self) -> int:
        """A full batch of the longest queries, every character \\u-escaped (12 bytes for a surrogate pair), plus 64 KiB."""
        return 64 * 1024 + self.max_batch * self.max_query_chars * 12


# ------------------------------------------------------------------------------------------ responses


WORDS_UNREAD = ("words of the query past the query tower's window (/health's limits.query_window_words): the tower reads the first "
                "ones only (BM25 in a hybrid folder reads them all); 0 for a query that fits")


class HitOut(BaseModel):
    id: str = Field(description="the passage id (as in the corpus the index was built from)")
    score: float = Field(description="a dense folder: inner product of the query and passage vectors (a cosine: both unit length, as the model outputs them); a hybrid folder: the fused score (0 to the sum of the weights; /health's index.ranking); with rerank=maxsim: the reranked score (0 to 1 for the top rerank.depth, below 0 for hits after them)")
    text: str


class SearchResponse(BaseModel):
    query: str
    k: int
    words_unread: int = Field(0, description=WORDS_UNREAD)
    took_ms: float = Field(description="time spent searching: tokenize + encode + FAISS + passage look-up, in ms")
    hits: list[HitOut] = Field(description="best first; fewer than k if the index holds fewer passages, or if an approximate index (IVF with a small nprobe, HNSW with a small efSearch) finds fewer")


class QueryHits(BaseModel):
    query: str
    words_unread: int = Field(0, description=WORDS_UNREAD)
    hits: list[HitOut]


class BatchResponse(BaseModel):
    k: int
    took_ms: float = Field(description="time spent searching the whole batch (one encoder pass, one FAISS call), in ms")
    results: list[QueryHits] = Field(description="one entry per query, in request order")


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description='where: e.g. ["query", "k"] or ["body", "queries", 2]')
    msg: str
    type: str


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong, in one line")
    detail: list[ErrorItem] = []


class HealthResponse(BaseModel):
    status: str
    passages: int = Field(description="corpus size: passages in the index")
    model: dict[str, Any] = Field(description="the model identity recorded in the index manifest (tokenizer, encoder settings, weight hashes)")
    index: dict[str, Any] = Field(description="the index folder: path, creation time, FAISS type, search parameters, source, ranking (dense, or dense + BM25 with its weights; pseudo-relevance feedback)")
    limits: dict[str, int]
    threads: dict[str, int] = Field(description="CPU threads one search uses (torch, FAISS), as seen from a worker thread")
    concurrency: int = Field(description="searches run at once; more wait their turn")
    max_waiting: int | None = Field(description="queries that may wait for a turn (a batch counts its queries); a search that would pass it gets a 503 (null: no limit)")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Body that cannot be decoded (not UTF-8 JSON text)"},
    503: {"model": ErrorResponse, "description": "Busy (every search slot taken and max_waiting queries waiting: retry after Retry-After seconds), or the server stopped (SIGTERM, then shutdown_timeout) before this request was answered"},
    415: {"model": ErrorResponse, "description": "Body sent with a Content-Type other than JSON (curl -d without -H 'Content-Type: application/json'), or compressed (a Content-Encoding)"},
    413: {"model": ErrorResponse, "description": "Request body larger than a full batch can be"},
    422: {"model": ErrorResponse, "description": "Invalid request: the error says what is wrong"},
}


# ------------------------------------------------------------------------------------------- errors


def _clean(value: str, limit: int = 200) -> str:
    """Safe to put in a JSON answer: lone surrogates escaped (they cannot be encoded as UTF-8), long text cut."""
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _where(item: ErrorItem) -> str:
    """``["query", "k"]`` -> ``k``; ``["body", "queries", 2]`` -> ``queries[2]``; ``["body"]`` -> ``body``."""
    loc = item.loc
    if item.type == "json_invalid":  # its loc ends in a character offset
        return "body"
    parts = list(loc[1:]) if len(loc) > 1 and loc[0] in ("query", "body") else list(loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "request"


def _message(error: dict, limits: Limits) -> str:
    kind, loc = error["type"], error.get("loc", ())
    if kind == "string_pattern_mismatch":
        return "is empty or only white space, punctuation or symbols: no searchable word; give some words to search for"
    if kind == "json_invalid":
        return f"not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})"
    if kind == "missing" and tuple(loc) == ("body",):
        return f'a JSON body is required: {{"queries": ["..."], "k": {limits.k}}}'
    if kind == "extra_forbidden":
        return "unknown field (a batch has only queries and k)"
    if tuple(loc) == ("body",):
        return f'{error["msg"]}; expected a JSON object {{"queries": ["..."], "k": {limits.k}}}'
    return error["msg"]


def _refuse_many_unknown(model: type[BaseModel], data):
    """More than ``MAX_LISTED`` unknown keys in a body object: the first ``MAX_LISTED`` refused as pydantic's
    ``extra_forbidden`` would, the last carrying how many more there are (``ctx.not_listed``), before pydantic
    makes an error for each of them: a 455 KB body of 56,000 unknown keys cost ~2 s of event-loop time in
    pydantic's and FastAPI's error lists and was answered with all 56,000 (5.3 MB)."""
    if not isinstance(data, dict) or len(data) <= len(model.model_fields) + MAX_LISTED:
        return data
    unknown = [key for key in data if key not in model.model_fields]
    if len(unknown) <= MAX_LISTED:
        return data
    listed = unknown[:MAX_LISTED]
    errors = [InitErrorDetails(type="extra_forbidden", loc=(key,), input=data[key]) for key in listed[:-1]]
    more = PydanticCustomError("extra_forbidden", "Extra inputs are not permitted", {"not_listed": len(unknown) - MAX_LISTED})
    errors.append(InitErrorDetails(type=more, loc=(listed[-1],), input=data[listed[-1]]))
    raise ValidationError.from_exception_data(model.__name__, errors)


def _methods_for(request: Request) -> list[str]:
    """Every method some route takes on the request's path (GET, HEAD, POST ...)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    return sorted(methods)


K_DIGITS = re.compile(r"0|[1-9][0-9]*")


def _plain_digits(value):
    """``k`` in the URL as plain decimal digits: pydantic's lax reading took "5_0" as 50 and " 1", "+5", "05" too."""
    if isinstance(value, str) and not K_DIGITS.fullmatch(value):
        if value == "":
            raise PydanticCustomError("int_parsing", "is empty; give a whole number (k=10), or leave k out for the default")
        raise PydanticCustomError("int_parsing", "Input should be a valid integer in plain decimal digits (k=10): no sign, space, underscore or leading zero")
    return value


def _integral_float_to_int(value):
    """JSON Schema counts 5.0 as an integer: accept it as 5 (the strict model still refuses "5" and true)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _error_response(status: int, error: str, detail: list[ErrorItem] = ()) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=_clean(error, 2000), detail=list(detail)).model_dump(), status_code=status)


def _listing(status: int, items: list[ErrorItem], total: int) -> JSONResponse:
    """A 4xx answer for ``total`` problems found before validation, of which ``items`` (at most ``MAX_LISTED``) are
    listed, each as ``query.k: given 2 times; give it once`` (its ``loc`` joined by dots)."""
    error = "; ".join(f"{'.'.join(str(p) for p in item.loc)}: {item.msg}" for item in items)
    if total > len(items):
        error += f"; and {total - len(items):,} more"
    return _error_response(status, error, items)


class ParameterProblems(Exception):
    """URL parameters a route does not take, or given more than once: a 422 listing them (``_listing``)."""

    def __init__(self, items: list[ErrorItem], total: int):
        super().__init__(f"{total} URL parameter problems")
        self.items, self.total = items, total


def _parameter_names(request: Request) -> list[str]:
    """The URL's parameter names in order, each as often as it is given."""
    return [name for name, _ in request.query_params.multi_items()]


def query_parameters(*allowed: str):
    """A dependency refusing URL parameters other than ``allowed`` and any given twice (``?q=a&q=b`` would
    otherwise search ``b`` alone; ``POST /search?k=1`` would ignore the ``k``): a 422 naming them. Linear in the
    parameters: it counted each name's copies with ``names.count`` for every name, and ``?q=a&k&k&...`` with 60,000
    ``k`` (a 120 KB URL) held the event loop ~5 s; it lists at most ``MAX_LISTED`` of them."""
    where = f"takes {', '.join(allowed)}" if allowed else "send settings in the JSON body"

    async def check(request: Request) -> None:  # async: no worker thread for a look at the URL
        counts = Counter(_parameter_names(request))
        unknown = [n for n in counts if n not in allowed]
        repeated = [n for n in counts if n in allowed and counts[n] > 1]
        if not unknown and not repeated:
            return
        items = [
            *(ErrorItem(loc=["query", _clean(n, 100)], msg=f"not a parameter here ({where})", type="unknown_parameter") for n in heapq.nsmallest(MAX_LISTED, unknown)),
            *(ErrorItem(loc=["query", n], msg=f"given {counts[n]} times; give it once", type="repeated_parameter") for n in sorted(repeated)),
        ]
        raise ParameterProblems(items[:MAX_LISTED], len(unknown) + len(repeated))

    return Depends(check)


# ---------------------------------------------------------------------------------------------- app


def create_app(
    searcher: Searcher, limits: Limits = Limits(), threads: int | None = None, search_params: str | None = None, concurrency: int | None = None, max_waiting: int | None = None
) -> FastAPI:
    """The service over a loaded searcher; each search uses ``threads`` CPU threads (None: the libraries'
    defaults), at most ``concurrency`` searches at once (None: the CPU cores this process may use), with at most
    ``max_waiting`` queries more waiting for a turn (None: no limit; beyond it a 503 with Retry-After).
    ``search_params`` is only reported (``Searcher.load`` applied it)."""
    index = searcher.index
    use_threads = ThreadSetting(threads)
    # A query longer than the query tower's window was searched by its first words only, and the answer did not say
    # so (search.py and evaluate.py do): each answer gives the words it did not read.
    tokenizer = searcher.encoder.tokenizer
    window = WindowCount.of_queries(tokenizer).max_len

    def words_unread(query: str) -> int:
        return max(0, len(tokenizer.split(query)) - window)

    searches = SearchSlots(concurrency, max_waiting)
    app = FastAPIOffline(
        title="two-tower search",
        version="1",
        description=(
            f"Dense retrieval over {len(index):,} passages with a two-tower RNN query encoder and FAISS. "
            "Every 4xx answer is `{\"error\": ..., \"detail\": [...]}`."
        ),
        static_url="/docs-assets",
        redirect_slashes=False,  # /search/ redirected to http://<the request's Host>/search: a 404 now
        redoc_url=None,  # one API page (/docs); ReDoc's was served without the page's headers, and undocumented
    )
    app.state.searches = searches
    app.router.route_class = ReadBodyRoute  # POST /search takes the body BodyLimit read off the event loop
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout=limits.body_timeout)
    app.add_middleware(StoppedInFlight)
    app.add_middleware(HtmlHeaders)

    # --- errors: one JSON shape, saying what is wrong -------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        sent = request.headers.get("content-type", "")
        if not _json_content(request.scope) and any(tuple(e.get("loc", ())) == ("body",) and e["type"] != "missing" for e in exc.errors()):
            # FastAPI reads a body as JSON only when it says so (curl -d sends a form type): say that, not "not a dictionary".
            how = f"sent as {_clean(sent, 100)}" if sent else "sent without a Content-Type"
            error = f"body: {how}; send the JSON object with Content-Type: application/json"
            return _error_response(415, error, [ErrorItem(loc=["body"], msg=error, type="content_type")])
        errors = exc.errors()
        items = [  # at most MAX_LISTED: the error and detail say how many more
            ErrorItem(loc=[_clean(p, 100) if isinstance(p, str) else p for p in e.get("loc", ())], msg=_clean(_message(e, limits)), type=e["type"])
            for e in errors[:MAX_LISTED]
        ]
        more = len(errors) - len(items) + sum((e.get("ctx") or {}).get("not_listed", 0) for e in errors[:MAX_LISTED])
        error = "; ".join(f"{_where(i)}: {i.msg}" for i in items) or "invalid request"
        return _error_response(422, error + (f"; and {more:,} more" if more else ""), items)

    @app.exception_handler(ParameterProblems)
    async def parameter_problems(request: Request, exc: ParameterProblems) -> JSONResponse:
        return _listing(422, exc.items, exc.total)

    @app.exception_handler(EmptyQueryError)
    async def empty_query(request: Request, exc: EmptyQueryError) -> JSONResponse:
        # The pattern and the tokenizer agree on words up to regex dialects (e.g. a lone combining mark): the rest lands here.
        return _error_response(422, str(exc), [ErrorItem(loc=["query"], msg=_clean(str(exc)), type="empty_query")])

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        response = _error_response(503, str(exc))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = str(exc.detail)
        if exc.status_code == 400 and error == "There was an error parsing the body":  # FastAPI's words for undecodable bytes
            error = "the body could not be read as JSON text: nested too deeply, or a number of over 4,300 digits"
        body_item = [ErrorItem(loc=["body"], msg=error, type="json_invalid")] if exc.status_code == 400 else []
        response = _error_response(exc.status_code, error, body_item)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the methods of the first route on the path only (PUT /search: "GET")
            response.headers["Allow"] = ", ".join(_methods_for(request))
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug; Starlette re-raises it for the server log
        response = _error_response(500, f"internal error ({type(exc).__name__}); see the server log")
        # Starlette answers this from its outermost middleware, outside the ones that add these to every answer
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    # --- search ------------------------------------------------------------------------------------

    async def searched(request: Request, queries: list[str], k: int, answer) -> JSONResponse:
        """``answer(results, took_ms)``'s JSON for these queries, searched (and encoded) on a worker thread in turn.
        A search whose client closes the connection while it waits for a turn is dropped from the queue (it ran
        all the same, and 100 batches sent and abandoned held an honest search back ~12 s, or 256 of them filled
        max_waiting, so the next clients got 503); a search already running finishes on its thread, in its slot."""

        def run() -> JSONResponse:
            use_threads()
            start = time.perf_counter()
            results = searcher.search(queries, k)
            return JSONResponse(answer(results, round((time.perf_counter() - start) * 1000, 3)))

        request_task, gone = asyncio.current_task(), []

        async def watch() -> None:  # cancels this request's search if its client goes away first
            await _client_gone(request.receive)
            gone.append(True)
            request_task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            return await searches.run(run, len(queries))
        except asyncio.CancelledError:
            # a cancel of our own alone (not also a stopping server's, which StoppedInFlight answers): not sent, no one reads it
            if gone and (request_task.uncancel() if hasattr(request_task, "uncancel") else 0) == 0:  # uncancel: Python 3.11+
                return _error_response(499, "the client closed the connection before its search ran")
            raise
        finally:
            watcher.cancel()

    QueryText = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_query_chars), AfterValidator(_searchable), Field(description=f"a query; it {QUERY_RULE}")]

    class SearchBatch(BaseModel):
        """A batch of queries, searched together."""

        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"queries": ["how long is a marathon", "what is a tariff"], "k": limits.k}]})
        queries: list[QueryText] = Field(min_length=1, max_length=limits.max_batch, description=f"1 to {limits.max_batch} queries, each 1 to {limits.max_query_chars} characters with a letter or digit")
        k: Annotated[int, BeforeValidator(_integral_float_to_int)] = Field(limits.k, ge=1, le=limits.k_max, description=f"passages per query, 1 to {limits.k_max}")

        @model_validator(mode="before")
        @classmethod
        def _few_unknown_fields(cls, data):
            return _refuse_many_unknown(cls, data)

    @app.get("/search", response_model=SearchResponse, responses=ERRORS, summary="Search one query", dependencies=[query_parameters("q", "k")])
    async def search_one(
        request: Request,
        q: Annotated[str, Query(min_length=1, max_length=limits.max_query_chars, description=f"the query text; it {QUERY_RULE}"), AfterValidator(_searchable)],
        k: Annotated[int, Query(ge=1, le=limits.k_max, description=f"passages to return, 1 to {limits.k_max} (plain decimal digits; leave it out for the default, {limits.k})"), BeforeValidator(_plain_digits)] = limits.k,
    ):
        return await searched(request, [q], k, lambda results, took: {"query": q, "k": k, "took_ms": took, "words_unread": words_unread(q), "hits": [vars(h) for h in results[0]]})

    @app.post("/search", response_model=BatchResponse, responses=ERRORS, summary="Search a batch of queries", dependencies=[query_parameters()])
    async def search_batch(request: Request, batch: SearchBatch):
        return await searched(request, batch.queries, batch.k, lambda results, took: {
            "k": batch.k,
            "took_ms": took,
            "results": [{"query": q, "words_unread": words_unread(q), "hits": [vars(h) for h in hits]} for q, hits in zip(batch.queries, results)],
        })

    # --- health ------------------------------------------------------------------------------------

    manifest = index.manifest
    index_info = {
        "path": str(Path(index.path).resolve()),
        "created": manifest.get("created"),
        "faiss": manifest.get("faiss"),
        "search_params": effective_search_params(saved_search_params(manifest), search_params),  # an override adds to the saved ones
        "source": manifest.get("source"),
        "files": manifest.get("files"),
        # how hits are ranked: dense alone, or dense + BM25 fused with these weights (Searcher.hybrid_search)
        "ranking": {
            **({"hybrid_weights": list(searcher.weights)} if searcher.weights is not None else {"dense": True}),
            "prf": asdict(searcher.prf) if searcher.prf is not None and searcher.prf.enabled else None,
            "rerank": asdict(searcher.rerank) if searcher.rerank is not None else None,
            # neighbour smoothing of the stored vectors, as index.py built the folder (smooth=neighbours)
            "smooth": (manifest.get("config") or {}).get("smooth"),
        },
    }

    status = {
        "status": "ok",
        "passages": len(index),
        "model": manifest["model"],
        "index": index_info,
        "limits": {"k_default": limits.k, "k_max": limits.k_max, "max_query_chars": limits.max_query_chars, "max_batch": limits.max_batch, "query_window_words": window},
        "threads": worker_thread_counts(use_threads),
        "concurrency": searches.size,
        "max_waiting": searches.max_waiting,
    }

    # async and computed at start: it answers at once however many searches are queued
    @app.get("/health", response_model=HealthResponse, summary="Model and index identity, corpus size")
    async def health():
        return status

    # HEAD too: load balancers and uptime monitors ask with it (405 before); one operation in the schema
    app.head("/health", include_in_schema=False)(health)

    # --- the page ----------------------------------------------------------------------------------

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# ------------------------------------------------------------------------------------------- threads


class ThreadSetting:
    """Applies a CPU thread count to torch and FAISS in the calling thread, once per thread.

    OpenMP (which both use on CPU) keeps the thread count per calling thread: set in the main thread,
    it does not reach the server's worker threads, which would each use one thread per core."""

    def __init__(self, threads: int | None):
        self.threads, self.local = threads, threading.local()

    def __call__(self) -> None:
        if self.threads is not None and not getattr(self.local, "applied", False):
            torch.set_num_threads(self.threads)
            faiss.omp_set_num_threads(self.threads)
            self.local.applied = True


def worker_thread_counts(use_threads: ThreadSetting) -> dict[str, int]:
    """The CPU threads torch and FAISS use in a worker thread once ``use_threads`` applied its setting there
    (OpenMP counts are per thread: the main thread's say nothing of a worker's)."""
    seen: dict[str, int] = {}

    def look() -> None:
        use_threads()
        seen.update(torch=torch.get_num_threads(), faiss=faiss.omp_get_max_threads())

    worker = threading.Thread(target=look)
    worker.start()
    worker.join()
    return seen


def cpu_count() -> int:
    """The CPU cores this process may run on (its affinity: a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class SearchSlots:
    """At most ``size`` searches run at once, each on a worker thread (their own limiter, not Starlette's
    shared pool); the others wait for a slot on the event loop, holding no thread, with at most ``max_waiting``
    queries among them (a batch counts its queries: a 64-query batch is about 64 queries' work, and counted as one
    search, 256 waiting batches were 16,384 queries' wait): a search that would take them past it is answered 503
    with ``Retry-After`` at once (``Busy``), so an overloaded server sheds load instead of making every answer later.
    A batch of more queries than ``max_waiting`` runs only when a slot is free.

    Turns are not first come, first served: a waiting search is ranked by the queries given a slot before it came
    plus its own, smallest first (fair queueing by queries), so a query that comes while a 64-query batch waits goes
    ahead of it, unless 63 queries' work has been given slots since the batch came (it waited behind every batch
    before it, first come, first served); a batch is passed by later searches for at most its own queries' work."""

    def __init__(self, size: int | None, max_waiting: int | None = None):
        self.check(size, max_waiting)
        self.size = size or cpu_count()
        self.max_waiting = max_waiting
        self._threads = None
        self._admitted = 0  # searches running or waiting; read and changed on the event loop only, with no await between
        self._waiting = 0  # the queries of the searches in _turns (the same): changed where an entry joins or leaves it
        self._free = self.size  # slots free (the same)
        self._turns: list = []  # the searches waiting for a slot: a heap of (rank, arrival, queries, future)
        self._given = 0  # queries given a slot so far: the clock of the ranks
        self._arrivals = 0

    @property
    def waiting(self) -> int:
        """The queries of the searches waiting for a slot."""
        return self._waiting

    @staticmethod
    def check(size, max_waiting) -> None:
        """The settings' one check (serve.py calls it before loading the index): a ConfigError naming the bad one."""
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ConfigError(f"concurrency={size!r}: must be a whole number >= 1, or null (the CPU cores: {cpu_count()})")
        if max_waiting is not None and (not isinstance(max_waiting, int) or isinstance(max_waiting, bool) or max_waiting < 0):
            raise ConfigError(f"max_waiting={max_waiting!r}: must be a whole number >= 0, or null (no limit)")

    async def run(self, fn, queries: int = 1):
        """``fn()`` on a worker thread in its turn, for a search of ``queries`` queries."""
        import anyio

        if self._threads is None:  # made inside the server's event loop
            self._threads = anyio.CapacityLimiter(self.size)
        # Counted here as each search comes (a count read from anyio's limiter's queue, which a search joined a turn of
        # the event loop later, let a burst of requests arriving together all in).
        waits = queries if self._admitted >= self.size else 0  # slots go in turn: the first `size` admitted run
        if self.max_waiting is not None and waits and self._waiting + waits > self.max_waiting:
            batch = f", this batch {queries}" if queries > 1 else ""
            raise Busy(f"busy: {self.size} search{'es' if self.size != 1 else ''} running and {self._waiting} quer{'y' if self._waiting == 1 else 'ies'} "
                       f"waiting (max_waiting {self.max_waiting}{batch}); retry in a moment")
        self._admitted += 1
        try:
            await self._slot(queries)  # a cancel while waiting for a slot (its client went away) leaves the queue
            try:
                work = asyncio.ensure_future(anyio.to_thread.run_sync(fn, limiter=self._threads))
                try:
                    return await asyncio.shield(work)
                except asyncio.CancelledError:
                    # A thread cannot be stopped: its slot stays taken until it ends (a review: freed at the cancel,
                    # each client that left mid-search let one more search run, past `concurrency`). A second cancel
                    # (a stopping server's shutdown_timeout) gives up waiting.
                    with contextlib.suppress(BaseException):
                        await work
                    raise
            finally:
                self._pass_on()
        finally:
            self._admitted -= 1

    async def _slot(self, queries: int) -> None:
        """Returns holding a slot: at once when one is free (then no search waits: a slot freed goes to a waiting one),
        else in its turn (the class docstring)."""
        if self._free > 0:
            self._free -= 1
            self._given += queries
            return
        turn = asyncio.get_running_loop().create_future()
        self._arrivals += 1
        entry = (self._given + queries, self._arrivals, queries, turn)
        heapq.heappush(self._turns, entry)
        self._waiting += queries
        try:
            await turn
        except asyncio.CancelledError:
            if turn.cancelled():  # cancelled while it waited: out of the queue, unless a slot freed meanwhile skipped it
                with contextlib.suppress(ValueError):
                    self._turns.remove(entry)
                    heapq.heapify(self._turns)
                    self._waiting -= queries
            else:  # given the slot as it was cancelled: the next search takes it
                self._pass_on()
            raise

    def _pass_on(self) -> None:
        """A slot freed: to the waiting search ranked first (its clock moves on by its queries), or free. A search
        handed the slot no longer waits from here: it was counted as waiting until it resumed, a turn of the event loop
        later, and a search arriving in between got a 503 for a queue with room."""
        while self._turns:
            _, _, queries, turn = heapq.heappop(self._turns)
            self._waiting -= queries  # out of the queue: given the slot, or cancelled while it waited
            if not turn.done():  # not cancelled while it waited
                self._given += queries
                turn.set_result(None)
                return
        self._free += 1


class Busy(Exception):
    """Every search slot is taken and the queries waiting would pass ``max_waiting``: a 503 with Retry-After."""


# ------------------------------------------------------------------------------- stopped in flight


class StoppedInFlight:
    """ASGI middleware: a request still unanswered when a stopping server gives up on it (SIGTERM, then
    ``shutdown_timeout``: uvicorn cancels it) gets a 503 in the one JSON error shape, not uvicorn's
    plain-text 500 and a traceback in the log. A search already running is left to finish on its thread
    first (a thread cannot be stopped), and its answer is not sent."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        no_store = scope["path"] == "/search"

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            if no_store and message["type"] == "http.response.start":  # search answers are not to be kept by caches
                message = {**message, "headers": [*message.get("headers", []), (b"cache-control", b"no-store")]}
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if started:
                raise
            response = _error_response(503, "the server stopped before this request was answered; send it again")
            response.headers["Connection"] = "close"
            await response(scope, receive, tracked)


# ------------------------------------------------------------------------------------- HTML headers


class HtmlHeaders:
    """ASGI middleware: every answer gets ``X-Content-Type-Options: nosniff``, and every HTML answer without a
    ``Content-Security-Policy`` gets the page's, with the hashes of its inline scripts allowed (Swagger UI's
    set-up script at /docs and /docs/oauth2-redirect): /static/index.html, /docs and the redirect page had neither."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: list[dict] = []

        async def headed(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
                html = dict(headers).get(b"content-type", b"").startswith(b"text/html")
                if html and b"content-security-policy" not in names:
                    held.append(message)  # sent with the body, once its scripts are known
                    return
            elif held and message["type"] == "http.response.body":
                held.append(message)
                if message.get("more_body", False):
                    return
                start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
                held.clear()
                await send({**start, "headers": [*start["headers"], (b"content-security-policy", _html_policy(body).encode())]})
                message = {"type": "http.response.body", "body": body, "more_body": False}
            await send(message)

        await self.app(scope, receive, headed)


def _html_policy(body: bytes) -> str:
    """The page's Content-Security-Policy, allowing the inline scripts of this HTML by their SHA-256 hashes."""
    import base64
    import hashlib

    scripts = re.findall(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", body, re.S | re.I)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in scripts)
    return PAGE_HEADERS["Content-Security-Policy"] + f"; script-src 'self'{' ' + hashes if hashes else ''}"


# ------------------------------------------------------------------------------------ body size limit


@dataclass(frozen=True)
class JsonBody:
    """A JSON body read once, on a worker thread (``_read_json``): the byte where it is not UTF-8, or its value, or the
    exception ``json.loads`` raised (the route raises it again, and FastAPI answers it as its own parse's), and the keys
    its object gives more than once."""

    not_utf8: int | None = None
    value: Any = None
    error: Exception | None = None
    repeated: dict[str, int] = field(default_factory=dict)


def _read_json(body: bytes) -> JsonBody:
    """``body`` read as FastAPI reads it (``json.loads``), once UTF-8 is checked (json.loads would take UTF-16 and
    UTF-32 too, and their ASCII, NULs between, is valid UTF-8: a NUL is named as the byte that is not; the API takes
    UTF-8, RFC 8259), with the keys its object gives more than once (json.loads
    keeps the last value: ``{"k": 1, "k": 100}`` would answer 100 hits, silently). Objects inside it are not looked at:
    the API has none (a nested one is refused by the schema). One parse: the check parsed the body a second time."""
    try:
        text = body.decode("utf-8-sig")  # a leading byte-order mark dropped, as json.loads(bytes) does
    except UnicodeDecodeError as err:
        return JsonBody(not_utf8=err.start)
    nul = body.find(b"\x00")  # never in JSON text (a string escapes it): UTF-16 or UTF-32, whose ASCII is valid UTF-8
    if nul >= 0:  # (in UTF-8 a 0 byte is the NUL character alone: no other character's bytes hold one)
        return JsonBody(not_utf8=nul)
    last: list = [()]  # the pairs of the object read last: the body's own, when the body is an object

    def pairs(items):
        last[0] = items
        return dict(items)  # what json.loads builds without the hook (the last value of a key, at its first place)

    try:
        value = json.loads(text, object_pairs_hook=pairs)  # the text: json.loads(bytes) read ASCII in UTF-16 or 32 (NULs, valid UTF-8) as JSON
    except Exception as err:  # noqa: BLE001 (FastAPI's own parse catches the same: invalid JSON 422, the rest 400)
        return JsonBody(error=err)
    if not isinstance(value, dict) or len(value) == len(last[0]):  # not an object (the schema says so), or no key twice
        return JsonBody(value=value)
    counts = Counter(key for key, _ in last[0])  # linear: keys.count per key took 7.5 s for 20,000 keys and one twice
    return JsonBody(value=value, repeated={key: n for key, n in counts.items() if n > 1})


# A JSON body of at most this many bytes is read on the event loop (a 16 KB body: 0.04 ms for 300 queries, 0.2 ms for
# 5,400 empty lists), not queued for the one worker thread that reads big ones (~10-25 ms a 420 KB body): a search's
# usual body does not wait behind a flood of big ones
INLINE_BODY_BYTES = 16 * 1024

# The scope key under which BodyLimit hands the route the body it read (a JsonBody)
JSON_BODY = "two_tower.json_body"


class ReadBodyRequest(Request):
    """A request whose JSON body ``BodyLimit`` already read on a worker thread: FastAPI takes it from there instead of
    parsing the body again, on the event loop (30 clients sending 417 KB bodies held /health ~1 s a probe)."""

    async def json(self) -> Any:
        read = self.scope.get(JSON_BODY)
        if read is None:  # not read by BodyLimit (not sent as JSON): Starlette's own reading
            return await super().json()
        if read.error is not None:
            raise read.error
        return read.value


class ReadBodyRoute(APIRoute):
    """FastAPI's route, handed a ``ReadBodyRequest`` (FastAPI's way to change how a route reads its request)."""

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def handler(request: Request):
            return await handle(ReadBodyRequest(request.scope, request.receive))

        return handler


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before the app reads it, and one not
    complete ``timeout`` seconds after its headers gets 408 (the connection is closed): a client that
    sends headers and then part of a body, or a byte a second, would otherwise hold its connection (and,
    a few thousand of them, the server) as long as it likes.

    Checks ``Content-Length`` and also counts a chunked body as it arrives; the body is read here (it is
    at most ``max_bytes``) and handed to the app unchanged; a JSON body is also parsed here, once, on a worker thread
    (``_read_json``), and its value handed to the route with it (``ReadBodyRequest``).
    """

    def __init__(self, app, max_bytes: int, timeout: float = 10.0, readers: int = 1):
        self.app, self.max_bytes, self.timeout, self.readers = app, max_bytes, timeout, readers
        self._limiter = None

    async def _read(self, body: bytes) -> JsonBody:
        """``_read_json(body)`` on a worker thread, at most ``readers`` at once: the event loop goes on answering (a
        417 KB body of empty lists takes it ~25 ms, twice when the repeated-key check parsed it apart); a limiter
        of their own, so a bad body's refusal never waits for a search's turn. One by default: json.loads holds the
        GIL while it reads, so parses side by side only slow each other and the event loop (with two readers, 30
        clients sending 417 KB bodies held /health 3.0x longer, and fewer bodies were answered)."""
        import anyio

        if len(body) <= INLINE_BODY_BYTES:  # read at once: a small body does not queue behind big ones' parses
            return _read_json(body)
        if self._limiter is None:  # made inside the server's event loop
            self._limiter = anyio.CapacityLimiter(self.readers)
        return await anyio.to_thread.run_sync(_read_json, body, limiter=self._limiter)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # Only /search reads its query string: the page's link /?q=caf%E9 (not UTF-8) is the page, not a JSON 400 (a probe)
        problem = _query_string_problem(scope.get("query_string", b"")) if scope.get("path") == "/search" else None
        if problem:  # Starlette would decode it with replacement characters and search for them
            name, msg = problem
            return await _error_response(400, f"query.{name}: {msg}", [ErrorItem(loc=["query", name], msg=msg, type="not_utf8")])(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                response = _error_response(408, f"request body not complete within {self.timeout:g} s of its headers")
                response.headers["Connection"] = "close"
                return await response(scope, receive, send)
            if message["type"] != "http.request":  # the client went away
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        # every Content-Encoding header and each coding listed in one ("gzip, identity"); identity changes nothing
        codings = [c.strip().lower() for name, value in scope["headers"] if name == b"content-encoding" for c in value.split(b",")]
        encoded = [c for c in codings if c and c != b"identity"]
        if body and encoded:  # a gzip body was read as text: "not UTF-8 (byte 1)"
            sent = _clean(encoded[0].decode("latin-1"), 40)
            error = f"body: sent with Content-Encoding: {sent}; send the JSON object uncompressed (this server reads no encoded body)"
            return await _error_response(415, error, [ErrorItem(loc=["body"], msg=error, type="content_encoding")])(scope, receive, send)
        if body and _json_content(scope):  # what FastAPI reads as JSON, read here once, on a worker thread
            read = await self._read(body)
            if read.not_utf8 is not None:
                msg = f"not UTF-8 text (byte {read.not_utf8}); send the JSON object encoded as UTF-8"
                response = _error_response(400, f"body: {msg}", [ErrorItem(loc=["body"], msg=msg, type="not_utf8")])
                return await response(scope, receive, send)
            if read.repeated:
                items = [ErrorItem(loc=["body", _clean(key, 40)], msg=f"given {n} times; give it once", type="repeated_key") for key, n in list(read.repeated.items())[:MAX_LISTED]]
                return await _listing(422, items, len(read.repeated))(scope, receive, send)
            scope = {**scope, JSON_BODY: read}  # the route takes the value from here (ReadBodyRequest)
        return await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)

    async def _too_large(self, scope, receive, send):
        error = f"request body over {self.max_bytes:,} bytes (the largest a full batch can need)"
        response = _error_response(413, error, [ErrorItem(loc=["body"], msg=error, type="too_large")])
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _json_content(scope) -> bool:
    """Whether the request's body is one FastAPI reads as JSON (its rule: application/json or application/...+json),
    by the first Content-Type header, the one FastAPI reads (Starlette's ``headers.get``): the last one, read here, let
    ``Content-Type: application/json`` then ``Content-Type: text/plain`` skip the UTF-8 and repeated-key checks."""
    sent = next((value for name, value in scope["headers"] if name == b"content-type"), b"")
    mime = sent.split(b";", 1)[0].strip().lower()
    return mime == b"application/json" or (mime.startswith(b"application/") and mime.endswith(b"+json"))


def _query_string_problem(raw: bytes) -> tuple[str, str] | None:
    """Which parameter of a URL's query string does not percent-decode to UTF-8 text (``?q=caf%E9``, Latin-1), and
    what is wrong, or None."""
    from urllib.parse import unquote_to_bytes

    for part in raw.split(b"&"):
        name, _, value = part.partition(b"=")
        for piece in (name, value):
            try:
                unquote_to_bytes(piece.replace(b"+", b" ")).decode("utf-8")
            except UnicodeDecodeError as err:
                what = _clean(unquote_to_bytes(name).decode("utf-8", "replace"), 40)
                return what, f"not UTF-8 text after percent-decoding (byte {err.start}); encode the URL's text as UTF-8"
    return None


async def _client_gone(receive) -> None:
    """Returns once the client has closed its connection (``http.disconnect``); called after the request's body
    was read, so the only other message is an empty ``http.request`` (a GET's body, replayed by ``BodyLimit``)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _replay(messages: list[dict], receive):
    async def replay():
        return messages.pop(0) if messages else await receive()

    return replay
