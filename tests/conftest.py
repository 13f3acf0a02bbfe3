"""Shared fixtures: Hydra configs composed like the CLI does, on small synthetic data in a temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import two_tower.core.cache  # noqa: F401  (registers ${two_tower_cache:}, as the commands do)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "two_tower" / "conf"

TINY = [
    "data=synthetic",
    "embeddings=random",
    "logger=none",
    "data.synthetic_rows.train_rows=300",
    "data.synthetic_rows.val_rows=60",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "+trainer.enable_progress_bar=false",  # also drops the progress bar callback (train.py)
    "+trainer.enable_model_summary=false",
    "encoder.hidden_size=32",
    "encoder.dim=32",
    "embeddings.dim=16",
]


def pytest_collection_modifyitems(config, items):
    """Slow tests first: run by several pytest-xdist workers (the default, ``-n auto``), the long
    end-to-end runs then start at once and the short tests fill in around them, so the workers finish
    together instead of one running a long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread a worker: the workers already use the cores, and oversubscribed OpenMP pools
    # slow every worker down (training runs set threads=1 themselves through the config).
    import torch

    torch.set_num_threads(1)


def compose_train(tmp_path: Path, overrides: list[str] = ()) -> DictConfig:
    """The train config for ``overrides`` on tiny synthetic data, writing under ``tmp_path``."""
    tiny = TINY
    if any(o.startswith("data=") for o in overrides):  # another data source: no synthetic sizes
        tiny = [o for o in TINY if not o.startswith(("data=", "data.synthetic_rows"))]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=[*tiny, *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # a real run's cfg has no hydra node; HydraConfig still answers ${hydra:...}
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    GlobalHydra.instance().clear()
    return cfg


# The shared model: TINY plus a stemmed bag-of-words path, so index, search and evaluate redraw its
# signatures on load.
TINY_RUN = ["encoder.bag_dim=16", "encoder.bag_stemmer=english"]


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder ``name`` that ``build(folder)`` fills once per test session. Under pytest-xdist all
    workers share it: the first to take its lock builds it, the others wait for it and read it."""
    from filelock import FileLock

    if os.environ.get("PYTEST_XDIST_WORKER"):  # the session's folder, shared by its workers
        root = tmp_path_factory.getbasetemp().parent / name
    else:
        root = tmp_path_factory.mktemp(name)
    with FileLock(f"{root}.lock"):
        if not (root / ".built").exists():
            root.mkdir(exist_ok=True)
            build(root)
            (root / ".built").touch()
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """One tiny model trained once for the whole session, for every test that only reads a trained
    checkpoint (retrieval, serve, container, negatives, reliability): its config, logged metrics,
    ``last.ckpt``, and its synthetic validation split as a jsonl shard folder (``data``). Read-only:
    copy a file before changing it. Under pytest-xdist the workers share it (``built_once``); the
    config is composed again by each, the same for all."""
    import json

    from two_tower.training.train import train

    def build(root: Path) -> None:
        cfg = compose_train(root, TINY_RUN)
        metrics = train(cfg)
        write_validation_shard(cfg, root / "data")
        (root / "metrics.json").write_text(json.dumps(metrics))

    root = built_once(tmp_path_factory, "tiny_run", build)
    cfg = compose_train(root, TINY_RUN)
    metrics = json.loads((root / "metrics.json").read_text())
    return {"cfg": cfg, "metrics": metrics, "ckpt": Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", "data": root / "data"}


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory):
    """``straight_run(settings)``: what ``train()`` returned for ``compose_train(settings)`` trained straight through, and
    its run folder; trained once a session for each ``settings`` (tests that stop and resume a run with the same settings
    compare with one), also when pytest-xdist workers share them. Read-only."""
    import hashlib
    import json

    from two_tower.training.train import train

    def get(settings: list[str]) -> tuple[dict, Path]:
        def build(root: Path) -> None:
            (root / "returned.json").write_text(json.dumps(train(compose_train(root, settings))))

        root = built_once(tmp_path_factory, "straight-" + hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:12], build)
        return json.loads((root / "returned.json").read_text()), root / "run"

    return get


# A DDP run on two CPU processes (Lightning starts the second by running train.py again), with dropout so each
# process draws from its own generator.
DDP_RUN = [o for o in TINY if not o.startswith(("trainer.max_epochs", "logger"))] + [
    "trainer.max_epochs=2", "logger=csv", "encoder.dropout=0.3", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory) -> dict:
    """``train.py DDP_RUN`` run once for the session (a DDP run takes both cores): its folder (``run``), its exit
    status and its output (stdout then stderr), for the tests that only read it. Read-only."""

    def build(root: Path) -> None:
        done = subprocess.run([sys.executable, "train.py", *DDP_RUN, f"paths.cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        (root / "output.txt").write_text(done.stdout + done.stderr)
        (root / "returncode.txt").write_text(str(done.returncode))

    root = built_once(tmp_path_factory, "ddp_run", build)
    return {"run": root / "run", "returncode": int((root / "returncode.txt").read_text()), "output": (root / "output.txt").read_text()}


def write_validation_shard(cfg: DictConfig, folder: Path) -> Path:
    """The synthetic validation split a ``data=synthetic`` train config (``cfg``) validated on, as a jsonl
    shard folder ``evaluate.py data.path=`` reads (the same rows, so evaluate scores what training logged)."""
    import json

    from two_tower.data import synthetic

    folder.mkdir(parents=True)
    with open(folder / "validation-00000-of-00001.jsonl", "w") as f:
        for row in synthetic.split_of(cfg.data.synthetic_rows, "validation"):
            f.write(json.dumps(row) + "\n")
    return folder


def build_tiny_index(root: Path, run: dict, extra_texts: list[str] = ()) -> tuple[Path, list[str]]:
    """An index folder built by index.py's code from the shared tiny checkpoint (``run``: the
    ``tiny_run`` fixture) over a jsonl corpus of ``extra_texts`` plus the synthetic validation
    passages; and those passages."""
    import json

    from two_tower.data import synthetic
    from two_tower.retrieval.indexer import build_index

    texts = list(dict.fromkeys(t for row in synthetic.split_of(run["cfg"].data.synthetic_rows, "validation") for t in row["passages"]["passage_text"]))
    corpus = root / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i, text in enumerate([*extra_texts, *texts]):
            f.write(json.dumps({"id": f"p{i}", "text": text}) + "\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        index_cfg = compose("index", overrides=[f"ckpt={run['ckpt']}", f"corpus={corpus}", f"out={root / 'index'}"])
    GlobalHydra.instance().clear()
    return Path(build_index(index_cfg)), texts


def run_tiny_multirun(tmp_path: Path, logger: str, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """``python train.py -m ARGS`` on the tiny synthetic settings with ``logger``, its cache and sweep dir
    (``multirun/``) under ``tmp_path``; asserts it exits 0."""
    overrides = [o for o in TINY if not o.startswith("logger")] + [
        f"logger={logger}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    cmd = [sys.executable, "train.py", "-m", *args, *overrides]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture
def tiny_cfg(tmp_path):
    return lambda *overrides: compose_train(tmp_path, list(overrides))


def wandb_records(run_dir: Path, timeout: float = 120) -> list:
    """The records (``wandb.proto`` ``Record``s) of the offline W&B run folder ``run_dir`` (``.../wandb/offline-run-*``).
    wandb-core writes them in a process of its own, and on a loaded machine its last ones can land after
    ``wandb.finish()`` has returned: the file is read again until it holds the run's exit record (or ``timeout``
    seconds pass)."""
    import struct
    import time

    from wandb.proto import wandb_internal_pb2 as pb

    def read(data: bytes) -> list:
        block, pos, pending, out = 32768, 7, b"", []  # a 7-byte file header, then LevelDB-log blocks of chunks
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
                pos += block - pos % block
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if pos + 7 + length > len(data):  # a chunk wandb-core is still writing: read again later
                break
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind == 1:  # a whole record
                out.append(chunk)
            elif kind in (2, 3):  # its first, middle parts
                pending = (b"" if kind == 2 else pending) + chunk
            elif kind == 4:  # its last part
                out.append(pending + chunk)
                pending = b""
        records = []
        for raw in out:
            record = pb.Record()
            try:
                record.ParseFromString(raw)
            except Exception:  # noqa: BLE001 (a record whose bytes are not all written yet: the loop reads again)
                break
            records.append(record)
        return records

    start = time.monotonic()
    while True:
        records = read(next(Path(run_dir).glob("*.wandb")).read_bytes())
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() - start > timeout:
            return records
        time.sleep(0.5)
