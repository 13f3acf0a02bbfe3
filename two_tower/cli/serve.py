"""The ``serve.py`` command: load an index folder once and serve it with uvicorn.

Like ``search.py`` it is not a ``@hydra.main`` script (a server writes no run folder); its settings are
Hydra overrides of ``conf/serve.yaml``, composed with Hydra's compose API.
"""

from __future__ import annotations

import asyncio
import gc
import re
import signal
import socket
import sys
import time

from two_tower.cli.common import compose_search_config, interrupted_status, report, say
from two_tower.core.checks import whole_number
from two_tower.core.commands import as_run, command
from two_tower.core.errors import ConfigError, TwoTowerError

USAGE = """usage: python serve.py index=DIR [host=127.0.0.1] [port=8000] [threads=1] [key=value ...]
Settings (two_tower/conf/serve.yaml): index, host, port, threads (per search, torch and FAISS), search_params,
hybrid (false = dense alone in a folder with a BM25 index; "hybrid=[0.5,0.5]" = fuse with these dense, BM25 weights), prf=rocchio (pseudo-relevance feedback;
prf.depth=N), rerank=maxsim (MaxSim rerank of the top rerank.depth=100; rerank.weight=W), concurrency (searches at once), max_waiting (queries waiting for a turn, a batch counting its queries; beyond: 503), k (default passages per query), k_max, max_query_chars, max_batch, header_timeout, body_timeout, send_timeout, keep_alive_timeout, shutdown_timeout,
max_connections, max_unsent_mb.
Then open http://HOST:PORT/ (search page), /docs (API), /health."""

# key=value, key.setting=value, +key=value or ~key: search_override_error says which of them name no setting
OVERRIDE = re.compile(r"^(\+{0,2}[A-Za-z_][\w.]*=|~[A-Za-z_][\w.]*(=|$))")


def listening_socket(host: str, port: int) -> socket.socket:
    """The socket uvicorn listens on, bound here (SO_REUSEADDR) so a busy port or an unknown host is one
    ConfigError line (exit 2) rather than uvicorn's log lines and exit 3. As uvicorn binds it: an IPv6 socket
    for a host with a colon, else IPv4 (``localhost`` is 127.0.0.1, wherever ::1 comes first); a name with
    IPv6 addresses only gets the first of them."""
    families = [socket.AF_INET6] if ":" in host else [socket.AF_INET, socket.AF_UNSPEC]
    for wanted in families:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, family=wanted, type=socket.SOCK_STREAM)[0]
            break
        except (socket.gaierror, UnicodeError) as err:
            if wanted == families[-1]:
                raise ConfigError(f"host={host}: no such address ({err})") from err
    try:
        sock = socket.socket(family, kind, proto)
    except OSError as err:  # e.g. an IPv6 address on a machine without IPv6
        raise ConfigError(f"host={host}: cannot open a socket for it ({err.strerror or err})") from err
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ConfigError(f"host={host} port={port}: cannot listen there ({err.strerror or err})") from err
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    """The serve.py command; returns the exit status (2 = unusable settings or index; 130 after Ctrl-C, with one
    ``interrupted`` line, also while the index loads, where it printed a traceback)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return interrupted_status()


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(as_run(USAGE, "serve"))
        return 0
    stray = [a for a in argv if not OVERRIDE.match(a)]
    if stray:
        print(f"error: not a key=value setting: {' '.join(stray)} ({command('serve')} --help lists the settings)", file=sys.stderr)
        return 2
    # a setting, a config group (prf=rocchio), or a key inside a group (prf.depth=3)
    cfg, message = compose_search_config("serve", argv)
    if message:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if cfg.index is None:
        print(f"error: which index? pass index=DIR (a folder written by {command('index')}; {command('serve')} --help lists the settings)", file=sys.stderr)
        return 2
    # the retrieval stack and the app (torch, faiss, bm25s, datasets: ~4 s), once the settings name an index
    from two_tower.retrieval.maxsim import MaxSimRerank
    from two_tower.retrieval.prf import RocchioPRF
    from two_tower.retrieval.search import Searcher
    from two_tower.serve.app import Limits, SearchSlots, check_seconds, create_app

    sock = None
    try:
        for name in ("index", "host", "search_params"):  # Hydra reads index=2024 as a number: a name all the same
            if cfg[name] is None and name == "search_params":
                continue
            if not isinstance(cfg[name], (str, int, float)) or isinstance(cfg[name], bool):
                raise ConfigError(f"{name}={cfg[name]!r}: must be a single path or name")
            cfg[name] = str(cfg[name])
        whole_number("port", cfg.port, 0, maximum=65535)  # 0: a free port the system picks (the start-up line names it)
        whole_number("max_connections", cfg.max_connections)
        whole_number("max_unsent_mb", cfg.max_unsent_mb)
        for name in ("header_timeout", "keep_alive_timeout", "body_timeout", "send_timeout", "shutdown_timeout"):
            check_seconds(name, cfg[name])
        if cfg.threads is not None:
            whole_number("threads", cfg.threads)
        SearchSlots.check(cfg.concurrency, cfg.max_waiting)
        limits = Limits(k=cfg.k, k_max=cfg.k_max, max_query_chars=cfg.max_query_chars, max_batch=cfg.max_batch, body_timeout=cfg.body_timeout)
        start = time.perf_counter()
        prf = RocchioPRF.from_config(cfg.get("prf"))
        rerank = MaxSimRerank.from_config(cfg.get("rerank"))
        # bound before the index loads (seconds to minutes), so a busy port is said at once; clients are refused
        # until uvicorn listens on it
        sock = listening_socket(cfg.host, cfg.port)
        searcher = Searcher.load(cfg.index, search_params=cfg.search_params, hybrid=cfg.hybrid, prf=prf, rerank=rerank)
        app = create_app(searcher, limits, threads=cfg.threads, search_params=cfg.search_params, concurrency=cfg.concurrency, max_waiting=cfg.max_waiting)
        # Listening from here on (a client now waits in the backlog until uvicorn accepts it, under a second): a server
        # that bound the port while this one loaded (SO_REUSEADDR lets two bind it while neither listens) and listens
        # first is met here, in one line, not in uvicorn after loading (a review)
        try:
            sock.listen(2048)
        except OSError as err:
            raise ConfigError(f"host={cfg.host} port={cfg.port}: cannot listen there ({err.strerror or err})") from err
    except TwoTowerError as err:  # bad settings, a missing or unusable index folder
        if sock is not None:
            sock.close()
        return report(err)
    except BaseException:  # Ctrl-C while the index loads: the port is free again at once
        if sock is not None:
            sock.close()
        raise

    import uvicorn

    from two_tower.serve.protocol import connection_cap, guarded_protocol

    protocol = guarded_protocol(cfg.header_timeout, connection_cap(cfg.max_connections), cfg.send_timeout, cfg.max_unsent_mb * 2**20)

    port = sock.getsockname()[1]
    if cfg.host in ("0.0.0.0", "::"):  # a URL there reaches nothing: say where it listens, and the local URL
        where = f"on all {'IPv4' if cfg.host == '0.0.0.0' else 'IPv6'} interfaces, port {port}: http://{'127.0.0.1' if cfg.host == '0.0.0.0' else '[::1]'}:{port}/ on this machine"
    else:
        where = f"http://{f'[{cfg.host}]' if ':' in cfg.host else cfg.host}:{port}/"
    line = f"Loaded {searcher.index.path} ({len(searcher.index):,} passages) in {time.perf_counter() - start:.1f}s; serving {where} (API docs at /docs)"

    class AnnouncingServer(uvicorn.Server):
        """Prints the start-up line once the socket accepts connections (uvicorn calls listen() in its start-up,
        ~30 ms after the line was printed before, and a client waiting for the line got ECONNREFUSED); ends the
        app's lifespan on a forced stop too."""

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # its reader may have gone (| head -2): the server serves all the same (it exited 1)
                say(line)

        async def shutdown(self, sockets=None) -> None:
            await super().shutdown(sockets=sockets)
            # uvicorn cancels the requests still open after shutdown_timeout and returns; run() then raises the signal
            # again, which ended the process before a cancelled request reached its 503 (the client read EOF: a probe)
            if self.server_state.tasks and not self.force_exit:  # a second Ctrl-C stops at once (nothing was cancelled)
                await asyncio.wait(set(self.server_state.tasks), timeout=1)
            if self.force_exit:  # a second Ctrl-C: uvicorn skips the app's lifespan end, and asyncio.run then cancelled
                await self.lifespan.shutdown()  # its waiting task, which logged a ~40-line CancelledError traceback

    # h11 with a header read timeout and an accept-time connection cap (two_tower/serve/protocol.py);
    # backlog: connections waiting to be accepted beyond those, kept by the kernel.
    # timeout_graceful_shutdown: on SIGTERM, requests in flight get shutdown_timeout seconds, then the rest are
    # cancelled, so a stuck client cannot hold a stop past a container engine's grace period (10 s) into SIGKILL.
    server = AnnouncingServer(uvicorn.Config(app, host=cfg.host, port=cfg.port, http=protocol, timeout_keep_alive=cfg.keep_alive_timeout,
                                             timeout_graceful_shutdown=cfg.shutdown_timeout, backlog=2048))
    # Everything loaded so far (the model, the index, ~300k objects) lives as long as the process: out of the garbage
    # collector's scans, which each request's parse of a large JSON body set off again and again (20 bodies of 150k
    # empty lists, each under max_body_bytes, held /health for 10 s in a probe: 0.6 s frozen). Python's own advice for
    # long-lived heaps (gc.freeze).
    gc.collect()
    gc.freeze()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn shuts down, then raises SIGINT again; 130, as a shell reports SIGINT
        return interrupted_status()  # the traceback under TWO_TOWER_DEBUG, as while the index loads
    finally:
        gc.unfreeze()  # main() called in a process that goes on (a test, a notebook): its objects are collected again
    # The signal raised again does nothing where it was ignored before uvicorn handled it (a server a script started
    # in the background inherits SIGINT ignored): it stopped all the same, and said so with 0.
    captured = getattr(server, "_captured_signals", ())
    if signal.SIGINT in captured:
        say("interrupted")
        return 130
    if signal.SIGTERM in captured:
        return 143
    return 0 if server.started else 3  # uvicorn.run's status for a server that could not start


if __name__ == "__main__":
    sys.exit(main())
