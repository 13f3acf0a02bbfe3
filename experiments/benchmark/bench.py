#!/usr/bin/env python
"""Speed benchmark: the bare towers vs the Lightning framework, on the same batches, in one run.

For each (encoder, batch size), every repeat runs these variants in a rotated order (interleaved, so
load from other processes hits all of them alike) and the tables report medians:

training (one epoch of the training split, same batches, same initial weights, same optimizer):
  bare        plain Python loop over pre-collated tensors: the towers' forward + loss + backward +
              gradient clipping (trainer.gradient_clip_val) + optimizer step. The limit.
  framework   Trainer.fit through the datamodule (sampler -> collate -> Lightning loop, logging as the
              module does it, the project's callbacks but its ModelCheckpoints: the progress bar...),
              no validation, logger=False, no checkpoints.
              Timed from on_train_epoch_start to on_train_end; the whole fit() call is reported too.
  packed      bare loop, towers forced to pack_padded_sequence (the original encoder)
  masks       bare loop, towers forced to run the RNN over the padded batch + masked pooling
  naive       the seed project's pipeline in a plain loop: random (unbucketed) batches, Python-list
              padding per batch inside the loop, no packing (RNN over padding, masked mean)
  loader      the framework's DataLoader alone (sampler + collate), no model
The framework's per-step losses are checked against the bare loop's (same math).

encoding (the validation split's unique passages, batches of the same size, sorted by length):
  bare        inference_mode loop of towers.encode_passages over pre-collated tensors
  framework   Trainer.validate through the datamodule (the module's validation_step), timed over its
              passage loader only (the query loader and the metrics that follow are not counted)
  packed/masks  bare loop with the encoder forced to one implementation

data preparation: TwoTowerDataModule.prepare_data + setup with an empty cache dir (cold: validate,
tokenize, build the vocabulary, write the cache) and again from that cache (warm).

Data: ../shared/data/marco7k (hub-style parquet) if present, else synthetic rows with a similar
length distribution. Embeddings are random vectors (dim 50, as GloVe 6B 50d): speed does not depend on
their values and the run needs no download.

    python experiments/benchmark/bench.py                      # full run (see README for the table)
    python experiments/benchmark/bench.py --repeats 1 --max-batches 5 --encoders gru --batch-sizes 64
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

from two_tower.data.batches import LengthSortedBatches, TokenBatches, TripletBatches, TripletBatchSampler  # noqa: E402
from two_tower.training.train import build_datamodule, build_module  # noqa: E402

MARCO = ROOT.parent / "shared" / "data" / "marco7k"
# Synthetic stand-in for marco7k's shape: 4,980 / 1,000 rows of 10 passages; marco7k has queries of
# ~6 tokens and passages of ~64 tokens (median 57, max 128 after truncation).
SYNTHETIC = [
    "data=synthetic",
    "data.synthetic_rows.train_rows=4980",
    "data.synthetic_rows.val_rows=1000",
    "data.synthetic_rows.passages_per_row=10",
    "+data.synthetic_rows.passage_words=[20,100]",
    "+data.synthetic_rows.query_filler=[1,5]",
]

log = logging.getLogger("bench")


# ----------------------------------------------------------------------------- configuration
def compose_cfg(encoder: str, batch_size: int, data: list[str], cache_dir: Path, out_dir: Path, extra: list[str] = (), eval_batch_size: int | None = None):
    overrides = [
        *data,
        f"encoder={encoder}",
        "embeddings=random",
        "logger=none",
        f"data.batch_size={batch_size}",
        f"data.eval_batch_size={eval_batch_size or batch_size}",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out_dir}",
        "trainer.max_epochs=1",
        "trainer.num_sanity_val_steps=0",
        "+trainer.enable_checkpointing=false",
        "+trainer.enable_model_summary=false",
        "~callbacks.model_checkpoint",
        "~callbacks.last_checkpoint",
        *extra,
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "two_tower" / "conf")):
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def datamodule_for(cfg):
    dm = build_datamodule(cfg)
    if dm.synthetic_rows is not None:  # list-valued settings as plain lists (the cache key is JSON)
        dm.synthetic_rows = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in dm.synthetic_rows.items()}
    return dm


def fresh_module(cfg, dm):
    L.seed_everything(cfg.seed, verbose=False)
    return build_module(cfg, dm)


# ----------------------------------------------------------------------------- encoder variants
def forward_packed(enc, ids, lengths):
    """RNNEncoder's computation with pack_padded_sequence (the original implementation)."""
    x = enc.dropout(enc.embedding(ids))
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    output, hidden = enc.rnn(packed)
    if enc.pooling == "last":
        h = hidden[0] if enc.cell == "lstm" else hidden
        directions = 2 if enc.rnn.bidirectional else 1
        pooled = torch.cat(list(h[-directions:]), dim=-1)
    else:
        padded, _ = pad_packed_sequence(output, batch_first=True, total_length=ids.shape[1])
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
        if enc.pooling == "mean":
            pooled = (padded * mask).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(padded.dtype)
        else:
            pooled = padded.masked_fill(~mask, float("-inf")).max(1).values
    return F.normalize(enc.projection(enc.dropout(pooled)), dim=-1)


def forward_masked(enc, ids, lengths):
    """The RNN over the whole padded batch, padding masked out of the pooling (unidirectional only)."""
    if enc.rnn.bidirectional:
        raise ValueError("masks give different results for bidirectional RNNs (the backward pass starts in the padding)")
    x = enc.dropout(enc.embedding(ids))
    output, _ = enc.rnn(x)
    if enc.pooling == "last":
        pooled = output[torch.arange(len(ids)), lengths - 1]
    else:
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
        if enc.pooling == "mean":
            pooled = (output * mask).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(output.dtype)
        else:
            pooled = output.masked_fill(~mask, float("-inf")).max(1).values
    return F.normalize(enc.projection(enc.dropout(pooled)), dim=-1)


VARIANTS = {"packed": forward_packed, "masks": forward_masked}


@contextlib.contextmanager
def forced(module, variant: str | None):
    """Temporarily route both towers through one encoder implementation (None: the model's own)."""
    if variant is None:
        yield
        return
    fn = VARIANTS[variant]
    encoders = {module.towers.query_encoder, module.towers.passage_encoder}
    for enc in encoders:
        if getattr(enc, "bag", None) is not None or getattr(enc, "skip", None) is not None:
            raise SystemExit(f"the {variant} variant times the RNN path alone; this encoder has a bag or skip path")
        # the towers call passage_encoder(ids, lengths, passages=True); the RNN path alone does not use it
        enc.forward = (lambda e: lambda ids, lengths, passages=False: fn(e, ids, lengths))(enc)
    try:
        yield
    finally:
        for enc in encoders:
            del enc.forward


# ----------------------------------------------------------------------------- data
def naive_collate(split, plan: np.ndarray) -> dict[str, torch.Tensor]:
    """The seed project's collate: Python lists padded per batch, then torch.tensor."""
    rows, passages = plan[:, 0].tolist(), plan[:, 1:]
    unique, inverse = np.unique(passages, return_inverse=True)
    inverse = inverse.reshape(passages.shape)

    def pad(seqs):
        seqs = [s.tolist() for s in seqs]
        width = max(len(s) for s in seqs)
        return torch.tensor([s + [0] * (width - len(s)) for s in seqs]), torch.tensor([len(s) for s in seqs])

    query_ids, query_lengths = pad([split.query_tokens[r] for r in rows])
    passage_ids, passage_lengths = pad([split.passage_tokens[p] for p in unique.tolist()])
    positives = [split.positives[r].tolist() for r in rows]
    width = max(len(p) for p in positives)
    return {
        "query_ids": query_ids,
        "query_lengths": query_lengths,
        "passage_ids": passage_ids,
        "passage_lengths": passage_lengths,
        "passage_pids": torch.tensor(unique.tolist()),
        "positive_column": torch.tensor(inverse[:, 0].tolist()),
        "negative_columns": torch.tensor(inverse[:, 1:].tolist(), dtype=torch.long).view(len(rows), -1),
        "positive_pids": torch.tensor([p + [-1] * (width - len(p)) for p in positives]),
    }


def padding_share(batches, keys=(("query_ids", "query_lengths"), ("passage_ids", "passage_lengths"))) -> float:
    """Padded tokens / tokens in the padded tensors (what a mask-based RNN processes)."""
    total = real = 0
    for b in batches:
        for ids, lengths in keys:
            total += b[ids].numel()
            real += int(b[lengths].sum())
    return 1 - real / total


def train_plans(dm, cfg, bucket_batches: int) -> list[np.ndarray]:
    sampler = TripletBatchSampler(dm.train, dm.negatives, cfg.data.batch_size, seed=cfg.seed, bucket_batches=bucket_batches)
    sampler.set_epoch(0)
    return sampler.plans()


# ----------------------------------------------------------------------------- timed runs
def now() -> np.ndarray:
    """[wall-clock seconds, CPU seconds of this process]. With one torch thread and in-process data
    loading, CPU time counts the same work as wall time but not the time other processes on the
    shared machine take the core away, so its ratios are far less noisy."""
    return np.array([time.perf_counter(), time.process_time()])


def bare_train(cfg, dm, batches, variant=None, collate=None) -> dict:
    module = fresh_module(cfg, dm)
    module.train()
    optimizer = module.configure_optimizers()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    clip = cfg.trainer.get("gradient_clip_val")
    losses, triplets = [], 0
    with forced(module, variant):
        start = now()
        for batch in batches:
            if collate is not None:
                batch = collate(batch)
            out = module.batch_loss(batch)
            out["loss"].backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(out["loss"].detach())
            triplets += len(batch["query_ids"])
        seconds = now() - start
    return {"seconds": seconds, "triplets": triplets, "losses": torch.stack(losses)}


class Timer(L.Callback):
    def __init__(self):
        self.losses, self.threads = [], None
        self.train_start = self.train_end = self.val_start = self.passages_end = None
        self.passages = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self.threads = torch.get_num_threads()
        self.train_start = now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach())

    def on_train_end(self, trainer, pl_module):
        self.train_end = now()

    def on_validation_epoch_start(self, trainer, pl_module):
        self.val_start = now()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx == 0:  # no clock reads per batch: only after the passage loader's last batch
            self.passages += batch["ids"].shape[0]
            if batch_idx == trainer.num_val_batches[0] - 1:
                self.passages_end = now()


@contextlib.contextmanager
def quiet():
    """The progress bar still renders (and costs what it costs) but into /dev/null, not the report."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


def make_trainer(cfg, timer: Timer, extra: dict, progress_bar: bool):
    from two_tower.training.utils import instantiate_group
    import hydra

    callbacks = instantiate_group(cfg.get("callbacks")) if progress_bar else []
    kwargs = dict(extra)
    if not progress_bar:
        kwargs["enable_progress_bar"] = False
    return hydra.utils.instantiate(cfg.trainer, callbacks=[*callbacks, timer], logger=False, **kwargs)


def framework_train(cfg, dm, max_batches, progress_bar) -> dict:
    module = fresh_module(cfg, dm)
    timer = Timer()
    extra = {"limit_val_batches": 0}
    if max_batches:
        extra["limit_train_batches"] = max_batches
    trainer = make_trainer(cfg, timer, extra, progress_bar)
    start = now()
    with quiet():
        trainer.fit(module, datamodule=dm)
    total = now() - start
    losses = torch.stack(timer.losses)
    return {"seconds": timer.train_end - timer.train_start, "fit_seconds": total, "losses": losses, "threads": timer.threads, "module": module}


def loader_only(dm, max_batches) -> dict:
    loader = dm.train_dataloader()
    start = now()
    triplets = 0
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        triplets += len(batch["query_ids"])
    return {"seconds": now() - start, "triplets": triplets}


def bare_encode(module, batches, variant=None) -> dict:
    module.eval()
    out = []
    with forced(module, variant), torch.inference_mode():
        start = now()
        for b in batches:
            out.append(module.towers.encode_passages(b["ids"], b["lengths"]).float())
        seconds = now() - start
    module.train()
    return {"seconds": seconds, "passages": sum(len(b["ids"]) for b in batches), "vectors": torch.cat(out)}


def framework_encode(cfg, dm, module, progress_bar) -> dict:
    timer = Timer()
    trainer = make_trainer(cfg, timer, {}, progress_bar)
    outs = []
    orig = module.validation_step

    def capture(batch, batch_idx, dataloader_idx=0):  # keep the vectors to compare with the bare loop
        orig(batch, batch_idx, dataloader_idx)
        if dataloader_idx == 0:
            outs.append(module._val_outputs[0][-1][1])

    module.validation_step = capture
    start = now()
    try:
        with quiet():
            trainer.validate(module, datamodule=dm, verbose=False)
    finally:
        del module.validation_step
    return {
        "seconds": timer.passages_end - timer.val_start,
        "validate_seconds": now() - start,
        "passages": timer.passages,
        "vectors": torch.cat(outs),
    }


def prep_once(cfg, cache_dir: Path) -> tuple[np.ndarray, object]:
    with open_dict(cfg):
        cfg.data.cache_dir = str(cache_dir)
    dm = datamodule_for(cfg)
    start = now()
    dm.prepare_data()
    dm.setup("fit")
    return now() - start, dm


# ----------------------------------------------------------------------------- report
def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x, digits=0):
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:,.{digits}f}"


def column(values, i):
    return [v[i] for v in values]


def ratio_cell(num, den, i):
    ratios = [n[i] / d[i] for n, d in zip(num, den)]
    if not ratios:
        return "n/a"
    return f"**{median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f})"


def report_tables(raw, configs, setups, args, base, n_rows) -> list[str]:
    lines = []
    clocks = (("wall-clock", 0), ("CPU time of the process", 1))
    for clock, i in clocks if not args.encode_only else ():
        lines += [
            f"Training, triplets/s by {clock} (one epoch, same batches; medians; ratio = median of the per-repeat ratios (min-max)):",
            "",
            "| encoder | batch | bare | framework | framework/bare | fit() incl. start-up | bare, packed | bare, masks | naive seed pipeline | framework/naive | loader alone |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for enc, bs in configs:
            t = raw[f"{enc}/{bs}"]["train"]
            g = lambda k: fmt(median(column(t.get(k, []), i)))  # noqa: E731
            lines.append(
                f"| {enc} | {bs} | {g('bare')} | {g('framework')} | {ratio_cell(t['framework'], t['bare'], i)} | {g('framework_fit')} | "
                f"{g('packed')} | {g('masks')} | {g('naive')} | {ratio_cell(t['framework'], t.get('naive', []), i)} | {g('loader')} |"
            )
        lines.append("")
    for clock, i in clocks:
        lines += [
            f"Encoding the validation corpus, passages/s by {clock} (batches of {args.encode_batch_size or 'the training batch size'}, sorted by length):",
            "",
            "| encoder | batch | bare | framework | framework/bare | bare, packed | bare, masks | validate() incl. queries + metrics |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for enc, bs in configs:
            t = raw[f"{enc}/{bs}"]["encode"]
            g = lambda k: fmt(median(column(t.get(k, []), i)))  # noqa: E731
            lines.append(
                f"| {enc} | {bs} | {g('bare')} | {g('framework')} | {ratio_cell(t['framework'], t['bare'], i)} | {g('packed')} | {g('masks')} | "
                f"{g('framework_validate_total')} |"
            )
        lines.append("")
    lines += [
        "Padding (padded tokens / tokens in the padded query + passage tensors of one epoch):",
        "",
        f"| batch | bucketed (bucket_batches={base.data.bucket_batches}) | passages only | unbucketed (naive) | passages only |",
        "|---|---|---|---|---|",
    ]
    for bs in args.batch_sizes:
        p = setups[(args.encoders[0], bs)]["padding"]
        lines.append(f"| {bs} | {100 * p['bucketed']:.1f}% | {100 * p['bucketed_passages']:.1f}% | {100 * p['unbucketed']:.1f}% | {100 * p['unbucketed_passages']:.1f}% |")
    lines.append("")
    cold, warm = median(column(raw["prep"]["cold"], 0)), median(column(raw["prep"]["warm"], 0))
    lines.append(
        f"Data preparation, wall-clock (prepare_data + setup: train + validation, {n_rows:,} rows): cold {cold:.2f} s ({n_rows / cold:,.0f} rows/s), "
        f"from cache {warm:.2f} s ({n_rows / warm:,.0f} rows/s): {cold / warm:.0f}x"
    )
    lines.append("")
    checks = []
    for k in raw:
        if k != "prep":
            checks.append(f"{k}: " + ", ".join(f"{n}={v:.2g}" if isinstance(v, float) else f"{n}={v}" for n, v in raw[k]["checks"].items()))
    lines.append("Checks (last repeat): " + "; ".join(checks))
    return lines


def thread_counts(args, configs, setups, env) -> dict:
    """Bare training (the model's own forward) at each torch thread count, interleaved; wall-clock."""
    raw = {f"{e}/{b}": {t: [] for t in args.thread_counts} for e, b in configs}
    for rep in range(args.repeats):
        for ci, (enc, bs) in enumerate(configs):
            s = setups[(enc, bs)]
            counts = list(args.thread_counts)
            k = (rep + ci) % len(counts)
            for t in counts[k:] + counts[:k]:
                torch.set_num_threads(t)
                gc.collect()
                res = bare_train(s["cfg"], s["dm"], s["batches"])
                raw[f"{enc}/{bs}"][t].append(res["triplets"] / res["seconds"][0])
            print(f"[repeat {rep + 1}/{args.repeats}] {enc} b{bs}: " + ", ".join(f"{t} threads {v[-1]:,.0f}" for t, v in raw[f"{enc}/{bs}"].items()) + " triplets/s", flush=True)
    base_t = args.thread_counts[0]
    lines = [
        f"Bare training, triplets/s by wall-clock at each torch thread count ({args.repeats} interleaved repeats, medians; "
        f"load average {env['load_average_start'][0]:.1f} -> {os.getloadavg()[0]:.1f}):",
        "",
        "| encoder | batch | " + " | ".join(f"{t} threads" for t in args.thread_counts) + " | " + " | ".join(f"{t}/{base_t}" for t in args.thread_counts[1:]) + " |",
        "|---|---|" + "---|" * (2 * len(args.thread_counts) - 1),
    ]
    for enc, bs in configs:
        r = raw[f"{enc}/{bs}"]
        ratios = [f"{median([a / b for a, b in zip(r[t], r[base_t])]):.2f}" for t in args.thread_counts[1:]]
        lines.append(f"| {enc} | {bs} | " + " | ".join(fmt(median(r[t])) for t in args.thread_counts) + " | " + " | ".join(ratios) + " |")
    report = "\n".join(lines)
    print("\n" + report, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "raw": raw, "report": report}, indent=1, default=str))
    return raw


def compare(before_json: str, after_json: str) -> str:
    """Before/after: framework throughput and framework/bare ratios of two runs (CPU time and wall-clock)."""
    before, after = (json.loads(Path(p).read_text()) for p in (before_json, after_json))
    lines = []
    for clock, i in (("CPU time", 1), ("wall-clock", 0)):
        lines += [
            f"Before ({before['env']['label'] or before_json}) -> after ({after['env']['label'] or after_json}), {clock}; medians of each run:",
            "",
            "| encoder | batch | train framework triplets/s | framework/bare | encode framework passages/s | framework/bare |",
            "|---|---|---|---|---|---|",
        ]
        for key in after["raw"]:
            if key == "prep" or key not in before["raw"]:
                continue
            enc, bs = key.split("/")
            cells = []
            for part in ("train", "encode"):
                b, a = before["raw"][key][part], after["raw"][key][part]
                fb, fa = median(column(b["framework"], i)), median(column(a["framework"], i))
                rb = median([f[i] / x[i] for f, x in zip(b["framework"], b["bare"])])
                ra = median([f[i] / x[i] for f, x in zip(a["framework"], a["bare"])])
                cells += [f"{fb:,.0f} -> {fa:,.0f} ({fa / fb:.2f}x)", f"{rb:.2f} -> **{ra:.2f}**"]
            lines.append(f"| {enc} | {bs} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(MARCO), help="hub-style parquet folder; synthetic rows if it does not exist")
    ap.add_argument("--encoders", nargs="+", default=["gru", "lstm"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-batches", type=int, default=0, help="limit training batches per run (0 = one full epoch)")
    ap.add_argument("--encode-batch-size", type=int, default=None, help="encoding batch size (default: the training batch size)")
    ap.add_argument("--encode-only", action="store_true", help="only the encoding rows (and data preparation)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's `threads`, else torch's default)")
    ap.add_argument("--no-progress-bar", action="store_true", help="framework runs without the progress bar callback")
    ap.add_argument("--no-variants", action="store_true", help="skip the packed/masks/naive/loader rows")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every config (e.g. data.num_workers=1)")
    ap.add_argument("--json", default=None, help="write all raw timings here")
    ap.add_argument("--label", default="", help="a name for this run in the output")
    ap.add_argument("--thread-counts", nargs="+", type=int, default=None, help="instead: bare training at each torch thread count (wall-clock)")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE_JSON", "AFTER_JSON"), help="instead: print a before/after table of two --json files")
    args = ap.parse_args(argv)
    if args.compare:
        print(compare(*args.compare))
        return {}

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "two_tower"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")

    data_path = Path(args.data)
    if data_path.exists():
        data = ["data=local", f"data.path={data_path.resolve()}"]
        data_name = f"{data_path.name} (local parquet)"
    else:
        data = SYNTHETIC
        data_name = f"synthetic (no {data_path})"
    work = Path(tempfile.mkdtemp(prefix="two_tower_bench_"))
    cache = work / "cache"
    progress_bar = not args.no_progress_bar

    base = compose_cfg(args.encoders[0], args.batch_sizes[0], data, cache, work / "out", args.override)
    threads = args.threads or base.get("threads")
    if threads:
        torch.set_num_threads(threads)
    env = {
        "label": args.label,
        "data": data_name,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
        "progress_bar": "TQDMProgressBar from conf/callbacks (refresh_rate=%s)" % base.callbacks.progress_bar.refresh_rate if progress_bar else "off",
        "num_workers": base.data.num_workers,
        "gradient_clip_val": base.trainer.gradient_clip_val,
        "repeats": args.repeats,
        "max_batches": args.max_batches,
        "overrides": args.override,
    }
    print(json.dumps(env, indent=1), flush=True)

    # Data once, so all variants see the same prepared split.
    import datasets

    datasets.disable_progress_bars()
    _, dm0 = prep_once(base, cache)
    configs = [(e, b) for e in args.encoders for b in args.batch_sizes]
    setups = {}
    for enc, bs in configs:
        cfg = compose_cfg(enc, bs, data, cache, work / "out", args.override, args.encode_batch_size)
        dm = datamodule_for(cfg)
        dm.prepare_data()
        dm.setup("fit")
        plans = train_plans(dm, cfg, cfg.data.bucket_batches)
        naive_plans = train_plans(dm, cfg, 0)
        if args.max_batches:
            plans, naive_plans = plans[: args.max_batches], naive_plans[: args.max_batches]
        collate = TripletBatches(dm.train)
        batches = [collate[p] for p in plans]
        naive_batches = [naive_collate(dm.train, p) for p in naive_plans]
        enc_plans = LengthSortedBatches(dm.val.passage_tokens.lengths, cfg.data.eval_batch_size)
        enc_batches = [TokenBatches(dm.val.passage_tokens)[p] for p in enc_plans]
        rnn = cfg.encoder
        variants = ["bare", "framework"]
        if not args.no_variants:
            variants += (["packed"] if args.encode_only else ["packed", "naive", "loader"]) + (["masks"] if not rnn.bidirectional else [])
        setups[(enc, bs)] = dict(cfg=cfg, dm=dm, batches=batches, naive_plans=naive_plans, enc_batches=enc_batches, variants=variants)
        setups[(enc, bs)]["padding"] = {
            "bucketed": padding_share(batches),
            "bucketed_passages": padding_share(batches, (("passage_ids", "passage_lengths"),)),
            "unbucketed": padding_share(naive_batches),
            "unbucketed_passages": padding_share(naive_batches, (("passage_ids", "passage_lengths"),)),
        }
        del naive_batches

    # Warm-up: a few steps of each cell so the first timed run does not pay for first-call costs.
    for enc, bs in configs:
        s = setups[(enc, bs)]
        bare_train(s["cfg"], s["dm"], s["batches"][:3])

    if args.thread_counts:
        return thread_counts(args, configs, setups, env)

    raw = {f"{e}/{b}": {"train": {}, "encode": {}, "checks": {}} for e, b in configs}
    raw["prep"] = {"cold": [], "warm": []}
    for rep in range(args.repeats):
        # data preparation: cold (empty cache) then warm (the cache just written)
        cold_dir = work / f"cold-{rep}"
        cold, _ = prep_once(compose_cfg(args.encoders[0], args.batch_sizes[0], data, cold_dir, work / "out", args.override), cold_dir)
        warm, dmw = prep_once(compose_cfg(args.encoders[0], args.batch_sizes[0], data, cold_dir, work / "out", args.override), cold_dir)
        assert dmw.cache_hit, "second prepare_data should hit the cache"
        raw["prep"]["cold"].append(cold.tolist())
        raw["prep"]["warm"].append(warm.tolist())
        shutil.rmtree(cold_dir, ignore_errors=True)

        for ci, (enc, bs) in enumerate(configs):
            s = setups[(enc, bs)]
            cfg, dm, r = s["cfg"], s["dm"], raw[f"{enc}/{bs}"]
            order = s["variants"][(rep + ci) % len(s["variants"]) :] + s["variants"][: (rep + ci) % len(s["variants"])]
            for variant in order:
                gc.collect()
                if args.encode_only:
                    module = fresh_module(cfg, dm)
                    if variant == "framework":
                        e = framework_encode(cfg, dm, module, progress_bar)
                        r["encode"].setdefault("framework_validate_total", []).append((e["passages"] / e["validate_seconds"]).tolist())
                    else:
                        e = bare_encode(module, s["enc_batches"], variant=None if variant == "bare" else variant)
                    r["encode"].setdefault(variant, []).append((e["passages"] / e["seconds"]).tolist())
                    continue
                if variant == "bare":
                    res = bare_train(cfg, dm, s["batches"])
                    r["_bare_losses"] = res.pop("losses")
                    module = fresh_module(cfg, dm)  # encoding: same weights for bare and framework
                    enc_bare = bare_encode(module, s["enc_batches"])
                    r["encode"].setdefault("bare", []).append((enc_bare["passages"] / enc_bare["seconds"]).tolist())
                elif variant == "framework":
                    res = framework_train(cfg, dm, args.max_batches, progress_bar)
                    res["triplets"] = sum(len(b["query_ids"]) for b in s["batches"])
                    r["_fw_losses"] = res.pop("losses")
                    r["checks"]["threads_in_fit"] = res.pop("threads")
                    res.pop("module")
                    r["train"].setdefault("framework_fit", []).append((res["triplets"] / res["fit_seconds"]).tolist())
                    module = fresh_module(cfg, dm)
                    enc_fw = framework_encode(cfg, dm, module, progress_bar)
                    r["encode"].setdefault("framework", []).append((enc_fw["passages"] / enc_fw["seconds"]).tolist())
                    r["encode"].setdefault("framework_validate_total", []).append((enc_fw["passages"] / enc_fw["validate_seconds"]).tolist())
                    ref = bare_encode(module, s["enc_batches"])
                    r["checks"]["encode_max_abs_diff"] = float((enc_fw["vectors"] - ref["vectors"]).abs().max())
                    r["checks"]["encode_passages"] = enc_fw["passages"]
                elif variant in ("packed", "masks"):
                    res = bare_train(cfg, dm, s["batches"], variant=variant)
                    r[f"_{variant}_losses"] = res.pop("losses")
                    module = fresh_module(cfg, dm)
                    e = bare_encode(module, s["enc_batches"], variant=variant)
                    r["encode"].setdefault(variant, []).append((e["passages"] / e["seconds"]).tolist())
                elif variant == "naive":
                    res = bare_train(cfg, dm, s["naive_plans"], variant="masks" if not cfg.encoder.bidirectional else "packed", collate=lambda p: naive_collate(dm.train, p))
                    res.pop("losses")
                elif variant == "loader":
                    res = loader_only(dm, args.max_batches)
                r["train"].setdefault(variant, []).append((res["triplets"] / res["seconds"]).tolist())
            if "_fw_losses" in r and "_bare_losses" in r:
                r["checks"]["loss_max_abs_diff_framework_vs_bare"] = float((r["_fw_losses"] - r["_bare_losses"]).abs().max())
                r["checks"]["steps"] = len(r["_bare_losses"])
            for v in ("packed", "masks"):
                if f"_{v}_losses" in r:
                    r["checks"][f"loss_max_abs_diff_{v}_vs_bare"] = float((r[f"_{v}_losses"] - r["_bare_losses"]).abs().max())
            print(f"[repeat {rep + 1}/{args.repeats}] {enc} b{bs}: " + ", ".join(f"{k} {v[-1][0]:,.0f}/{v[-1][1]:,.0f}" for k, v in r["train"].items()) + " triplets/s; encode " + ", ".join(f"{k} {v[-1][0]:,.0f}/{v[-1][1]:,.0f}" for k, v in r["encode"].items()) + " passages/s (wall/cpu)", flush=True)
    env["load_average_end"] = os.getloadavg()

    # ------------------------------------------------------------------ tables
    n_rows = dm0.meta["reports"]["train"]["kept"] + dm0.meta["reports"]["validation"]["kept"]
    header = (
        f"data: {data_name}; torch threads {env['torch_threads']}; progress bar: {env['progress_bar']}; num_workers {env['num_workers']}; "
        f"{args.repeats} interleaved repeats; load average {env['load_average_start'][0]:.1f} -> {env['load_average_end'][0]:.1f}"
    )
    report = "\n".join([header, "", *report_tables(raw, configs, setups, args, base, n_rows)])
    print("\n" + report, flush=True)
    summary = {
        f"{clock}/{key}/{part}": median([f[i] / b[i] for f, b in zip(raw[key][part]["framework"], raw[key][part]["bare"])])
        for i, clock in enumerate(("wall", "cpu"))
        for key in (f"{e}/{b}" for e, b in configs)
        for part in (("encode",) if args.encode_only else ("train", "encode"))
    }

    if args.json:
        clean = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} if isinstance(v, dict) else v for k, v in raw.items()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"env": env, "raw": clean, "summary": summary, "report": report}, indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)
    return summary


if __name__ == "__main__":
    main()
