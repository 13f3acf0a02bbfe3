"""``python search.py index=DIR "your question"``: search an index folder from the command line.

Not a ``@hydra.main`` command, because the query is free text; settings are still Hydra overrides of
conf/search.yaml (composed with Hydra's compose API, no run folder is written).
"""

from __future__ import annotations

import json
import re
import sys
from typing import TYPE_CHECKING

from two_tower.cli.common import command_settings, compose_search_config, drop_stdout, interrupted_status, path_setting_error, report
from two_tower.core.checks import check_config
from two_tower.core.errors import EmptyQueryError, TwoTowerError
from two_tower.core.threads import set_threads
from two_tower.core.commands import as_run, command

if TYPE_CHECKING:
    from two_tower.retrieval.search import Hit, Searcher

# The retrieval modules (torch, faiss, bm25s, datasets: ~4 s) are imported in the functions that use them, after the
# overrides passed their check: a bad override and --help stay quick.

USAGE = """usage: python search.py index=DIR "your question" [k=10] [key=value ...]
       python search.py index=DIR query="your question"
       python search.py index=DIR --interactive          (type queries; empty line or Ctrl-D to quit)
       python search.py index=DIR < queries.txt          (one query a line, searched in batches)
Settings (two_tower/conf/search.yaml): k, search_params (e.g. "search_params='efSearch=256'"), ckpt (check the index against a
checkpoint and encode queries with it), batch_size, max_chars, prf=rocchio (pseudo-relevance feedback; prf.depth=N), rerank=maxsim (MaxSim rerank of the top rerank.depth=100; rerank.weight=W),
hybrid (false = dense alone in a folder with a BM25 index; "hybrid=[0.5,0.5]" = fuse with these dense, BM25 weights),
format=jsonl (one JSON object a query, {query, k, hits: [{id, score, text}]}, as the server answers without took_ms and words_unread; whole texts),
threads (torch and FAISS threads; default 1, null: one per core)."""


def usage() -> str:
    """USAGE, with the command as this one was run (``two-tower-search`` where installed as one)."""
    return as_run(USAGE, "search")


def split_arguments(argv: list[str]) -> tuple[list[str], list[str], bool, str | None]:
    """(Hydra overrides, free query words, interactive, the ``query=`` text). An argument is an override if
    it starts with ``key=`` (or ``+key=`` / ``~key``) for a key made of letters, digits, ``_`` and ``.``,
    unless its key is not a setting and it holds white space (``"E=mc2 boundary"`` is a query). The text of
    ``query=...`` is taken as it is, not parsed by Hydra (quotes, commas and brackets are words)."""
    override = re.compile(r"^(\+?[A-Za-z_][\w.]*=|~[A-Za-z_][\w.]*$)")
    known = {*command_settings("search"), "hydra"}  # an argument naming one of these is a setting
    overrides, words, interactive, query = [], [], False, None
    for arg in argv:
        if arg in ("--interactive", "-i"):
            interactive = True
        elif arg in ("--help", "-h"):
            print(usage())
            sys.exit(0)
        elif arg.lstrip("+").startswith("query="):
            query = arg.lstrip("+").partition("=")[2]
        elif override.match(arg) and (re.split(r"[.=]", arg.lstrip("+~"), 1)[0] in known or not re.search(r"\s", arg)):
            overrides.append(arg)
        else:
            words.append(arg)
    return overrides, words, interactive, query


def render(query: str, hits: list[Hit], cfg) -> str:
    """One query's results as ``cfg.format`` says: ``format_results``' lines, or one JSON object (``jsonl``)."""
    if cfg.format == "jsonl":
        return json.dumps({"query": query, "k": cfg.k, "hits": [vars(h) for h in hits]}, ensure_ascii=False)
    return format_results(query, hits, cfg.max_chars)


def cut(text: str, max_chars: int) -> str:
    """``text`` in at most ``max_chars`` characters (0: whole), cut with "..." where there is room for it (max_chars=1
    took [:-2], nearly the whole text)."""
    if not max_chars or len(text) <= max_chars:
        return text
    return text[: max_chars - 3] + "..." if max_chars > 3 else text[:max_chars]


# Control characters (C0, DEL, C1), line or paragraph separators and Unicode's bidirectional controls (the property
# Bidi_Control: the embeddings and overrides U+202A-202E, the isolates U+2066-2069 and the marks U+200E, U+200F,
# U+061C) a passage, an id or a query may hold. Printed raw, a passage's newline made a line that reads as one more hit
# ("  1  0.9999  [forged]"), a carriage return wrote over its own hit's rank and score, an escape sequence was run by
# the terminal (colours, clearing the screen, the window title), and a U+202E laid the rest of its line out right to
# left in a terminal that applies the bidirectional algorithm, so the hit read as another text ("Trojan Source",
# CVE-2021-42574). The marks, invisible too, were printed raw: "10 - 20" between two U+200F (or U+061C) is laid out
# "20 - 10". Right-to-left letters themselves are kept (they are seen, and so is what they do to their neighbours).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
SPACE_LIKE = "\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\u2028\u2029"  # the line and white-space controls (str.splitlines' breaks): a space each


def one_line(text: str) -> str:
    """``text`` as one line of plain characters: white-space controls as a space, the others as their escape
    (``\\x1b``), so nothing in a passage can end its hit's line or reach the terminal as a command."""
    return CONTROL.sub(lambda m: " " if m[0] in SPACE_LIKE else escape(m[0]), text)


def escape(char: str) -> str:
    """``char`` as Python writes it in a string: ``\\x1b``, ``\\u202e``."""
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def format_results(query: str, hits: list[Hit], max_chars: int) -> str:
    """One line for the query, then one a hit: rank, score, [id], the text (each on its own line: ``one_line``)."""
    lines = [f"query: {cut(one_line(query), max_chars)}"]  # a 20,000-word query was echoed whole (a probe)
    for rank, hit in enumerate(hits, start=1):
        lines.append(f"{rank:3d}  {hit.score:.4f}  [{one_line(hit.id)}]  {cut(one_line(hit.text), max_chars)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The search.py command; returns the exit status (0 ok, 1 some queries failed or the results could not all
    be written, 2 unusable input; 141 when the reader of stdout closed it, as a shell pipeline's writer; 130 after
    Ctrl-C, as a shell reports SIGINT, with one ``interrupted`` line, as index.py, evaluate.py and serve.py say it:
    it printed a traceback, while the index loaded or a batch was searched)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return interrupted_status()
    except BrokenPipeError:  # e.g. | head -1: stop quietly (and keep Python from failing again at exit)
        drop_stdout()
        return 141
    except _OutputFailed as failed:
        err = failed.__cause__
        drop_stdout()
        print(f"error: cannot write the results to stdout ({err.strerror or err}); they are incomplete", file=sys.stderr)
        return 1


class _OutputFailed(Exception):
    """Writing stdout failed (a full disk, a closed descriptor), not reading a file: the OSError is its cause."""


def _print_out(text: str) -> None:
    """A result on stdout, flushed at once (a failed write surfaces here, named by ``main``)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise
    except OSError as err:
        raise _OutputFailed from err


def window_note(searcher: Searcher, query: str, where: str = "the query") -> None:
    """A line on stderr when ``query`` is longer than the query tower's window (``max_query_len`` words): it reads
    the first ones only, silently before (BM25 in a hybrid folder reads them all)."""
    from two_tower.data.tokenizer import WindowCount

    tokenizer = searcher.encoder.tokenizer
    window = WindowCount.of_queries(tokenizer)
    words = len(tokenizer.split(query))
    if words > window.max_len:
        print(f"note: {where} has {words} words; the query tower reads its first {window.max_len} "
              f"({window.setting}, fixed when the model was trained)", file=sys.stderr)


def _main(argv: list[str] | None) -> int:
    overrides, words, interactive, raw_query = split_arguments(sys.argv[1:] if argv is None else argv)
    flag = next((w for w in words if re.match(r"--[A-Za-z]", w)), None)
    if flag:  # Hydra's --cfg job or a mistyped --interactive was searched for as text
        print(f"error: {flag.split('=', 1)[0]}: not an option of {command('search')} (it takes --interactive and --help; settings are "
              f"key=value, e.g. k=5); to search for text starting with --, give it as query=\"...\"", file=sys.stderr)
        return 2
    cfg, message = compose_search_config("search", overrides)
    if message:
        print(f"error: {message}", file=sys.stderr)
        return 2
    if raw_query is not None and words:
        print("error: give the query either as text or as query=..., not both", file=sys.stderr)
        return 2
    message = path_setting_error("search", cfg, overrides)
    if message:
        print(f"error: {message}", file=sys.stderr)
        return 2
    if cfg.index is None:  # before the import below (datasets, ~1 s)
        print(f"error: which index? pass index=DIR (a folder written by {command('index')})\n{usage()}", file=sys.stderr)
        return 2
    from two_tower.retrieval.corpus import not_utf8

    query = raw_query if raw_query is not None else (" ".join(words) if words else None)
    if query is not None and not_utf8(query):
        print("error: the query is not UTF-8 text", file=sys.stderr)
        return 2
    if query is None and not interactive and (sys.stdin is None or sys.stdin.isatty()):  # None: stdin closed
        print(f"error: no query given\n{usage()}", file=sys.stderr)
        return 2
    from two_tower.retrieval.index import check_k
    from two_tower.retrieval.maxsim import MaxSimRerank
    from two_tower.retrieval.prf import RocchioPRF
    from two_tower.retrieval.search import Searcher

    try:
        check_k(cfg.k)
        set_threads(cfg.threads)
        check_config(cfg, ["batch_size", "max_chars", "format"])
        prf = RocchioPRF.from_config(cfg.get("prf"))
        rerank = MaxSimRerank.from_config(cfg.get("rerank"))
        searcher = Searcher.load(cfg.index, checkpoint=cfg.ckpt, search_params=cfg.search_params, prf=prf, hybrid=cfg.hybrid, rerank=rerank)
        if query is not None:
            _print_out(render(query, searcher.search([query], cfg.k)[0], cfg))
            window_note(searcher, query)
            return 0
    except TwoTowerError as err:
        return report(err)
    if interactive:
        return _interactive(searcher, cfg)
    # bytes, decoded line by line: a line that is not UTF-8 is one error line whatever the locale (a strict
    # locale's text stdin raised UnicodeDecodeError, losing the lines read with it)
    return _batches(searcher, cfg, getattr(sys.stdin, "buffer", sys.stdin))


def _interactive(searcher: Searcher, cfg) -> int:
    """Queries typed one at a time. The prompt goes to stderr, so stdout holds results only (format=jsonl stays
    one JSON object a line), unless stdout is the terminal too; a terminal reads with line editing and a history
    of the queries typed (input() with readline), anything else as bytes decoded line by line, so a line that is
    not UTF-8 is one error line whatever the locale."""
    from two_tower.retrieval.corpus import not_utf8

    tty = sys.stdin is not None and sys.stdin.isatty()
    # input() edits a line only once readline is loaded, and only when stdout is a terminal too: without it an arrow
    # key went into the query as an escape sequence ("transfer\x1b[D..." searched, Up searched "\x1b[A").
    # Readline writes the prompt itself (to stdout), so it knows where the line starts when it redraws it.
    edited = tty and sys.stdout is not None and sys.stdout.isatty()
    if edited:
        try:
            import readline  # noqa: F401
        except ImportError:  # Python built without it (Windows): input() as before
            pass
    while True:
        if not edited:
            print("query> ", end="", file=sys.stderr, flush=True)
        try:
            if tty:
                query = input("query> " if edited else "")
            else:
                raw = sys.stdin.buffer.readline() if sys.stdin is not None else b""
                if not raw:
                    raise EOFError
                try:
                    query = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    query = "\udcff"  # not UTF-8: refused below
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        except UnicodeDecodeError:  # a terminal whose strict locale cannot decode the line
            query = "\udcff"
        if not query.strip():
            return 0
        if not_utf8(query):
            print("error: the query is not UTF-8 text", file=sys.stderr)
            continue
        if tty and "\x1b" in query:  # a key's escape sequence read as text: no line editing with stdout redirected
            print("error: the line holds a key's escape sequence (an arrow key?), not searched; type it again (keys edit "
                  "the line only when stdout is the terminal too)", file=sys.stderr)
            continue
        try:
            searcher.encoder.check_query(query)
        except EmptyQueryError as err:
            print(f"error: {err}", file=sys.stderr)
            continue
        _print_out(render(query, searcher.search([query], cfg.k)[0], cfg))
        window_note(searcher, query)


def _batches(searcher: Searcher, cfg, lines) -> int:
    """One query a line. Blank lines are passed over (a queries file may end in, or hold, one); a line that
    is not UTF-8 or has no searchable word is reported on stderr and skipped, and the status is then 1."""
    from two_tower.retrieval.corpus import not_utf8

    status, searched, skipped = 0, 0, 0
    batch: list[tuple[int, str]] = []

    def flush():
        results = searcher.search([q for _, q in batch], cfg.k)
        for (_, query), hits in zip(batch, results):
            _print_out(render(query, hits, cfg) + ("\n" if cfg.format == "text" else ""))  # text: a blank line between
        batch.clear()

    for number, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                line = None
        query = line.rstrip("\r\n") if line is not None else None
        if query is not None and not query.strip():
            continue
        if query is None or not_utf8(query):  # bytes that are not UTF-8 (or, from a text stdin, their surrogates)
            print(f"error: line {number} is not UTF-8 text; skipped", file=sys.stderr)
            status, skipped = 1, skipped + 1
            continue
        try:
            searcher.encoder.check_query(query, f"line {number}")
        except EmptyQueryError as err:
            print(f"error: {err}; skipped", file=sys.stderr)
            status, skipped = 1, skipped + 1
            continue
        window_note(searcher, query, f"line {number}")
        batch.append((number, query))
        searched += 1
        if len(batch) == cfg.batch_size:
            flush()
    if batch:
        flush()
    if not searched and skipped:  # each was reported above: no usage text, which says to give queries (a probe)
        print(f"error: none of the {skipped} queries on stdin could be searched", file=sys.stderr)
        return 2
    if not searched:
        print(f"error: no query on stdin\n{usage()}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
