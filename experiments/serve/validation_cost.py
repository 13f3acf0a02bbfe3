"""Whether pydantic's validation of a big POST /search body, which runs on the event loop (the parse of a body over
INLINE_BODY_BYTES runs on a worker thread), holds /health up.

    python experiments/serve/validation_cost.py --index INDEX_DIR

First, in this process: the parse (``_read_json``) and the validation (the route's body field) of each body, the
median of 5. Then serve.py from this tree over INDEX_DIR, once per body and round (alternating, ``--rounds``): 30
clients POST it in a loop while /health is asked every 0.1 s (``big_bodies.measure``). The bodies are ~450 KB (under
the default max_body_bytes) and refused 422, either by validation after their parse (64 queries too long; 64 lists)
or at the parse (the same long-query body with its last byte cut: the parse, no validation): the ratio of /health's
median under a body refused by validation to the one under the body refused at its parse is what validation adds.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from big_bodies import flooded  # noqa: E402

TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bodies() -> dict[str, bytes]:
    long_queries = json.dumps({"queries": ["garden " * 1000] * 64}).encode()
    return {
        "64 queries of 7,000 chars (validation: 64 errors)": long_queries,
        "64 lists of 1,000 ints (validation: 64 errors)": json.dumps({"queries": [[1] * 1000] * 64}).encode(),
        "the first, last byte cut (parse fails)": long_queries[:-1],
    }


def in_process(index: str) -> None:
    sys.path.insert(0, TREE)
    from fastapi.routing import APIRoute

    from two_tower.retrieval.search import Searcher
    from two_tower.serve.app import Limits, _read_json, create_app

    app = create_app(Searcher.load(index), Limits())
    route = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/search" and "POST" in r.methods)
    field = route.dependant.body_params[0]
    for name, body in bodies().items():
        parse, validate = [], []
        for _ in range(5):
            start_ = time.perf_counter()
            read = _read_json(body)
            parse.append(time.perf_counter() - start_)
            if read.error is None:
                start_ = time.perf_counter()
                field.validate(read.value, {}, loc=("body",))
                validate.append(time.perf_counter() - start_)
        shown = f"{statistics.median(validate) * 1e3:.2f} ms" if validate else "none (not JSON)"
        print(f"{name}: {len(body) / 1e3:.0f} KB, parse {statistics.median(parse) * 1e3:.1f} ms, validation {shown}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    in_process(args.index)
    medians: dict[str, list[float]] = {name: [] for name in bodies()}
    for round_ in range(args.rounds):
        for name, body in bodies().items():
            seen = flooded(TREE, args.index, body, args.clients, args.seconds)
            medians[name].append(seen["median"])
            print(f"round {round_} {name}: /health median {seen['median'] * 1e3:.1f} ms, p90 {seen['p90'] * 1e3:.1f} ms "
                  f"({seen['probes']} asked); bodies answered {seen['bodies']}", flush=True)
    overall = {name: statistics.median(values) for name, values in medians.items()}
    base = overall["the first, last byte cut (parse fails)"]
    for name, value in overall.items():
        print(f"{name}: /health median {value * 1e3:.1f} ms, {value / base:.2f}x the parse-fails body's")


if __name__ == "__main__":
    main()
