"""End to end on synthetic data: every part trains, the model learns, runs resume and reproduce."""

import logging
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, TINY, compose_train, run_tiny_multirun
from two_tower.training.train import train


@pytest.mark.parametrize(
    "overrides",
    [
        ["encoder=rnn", "negatives=random", "loss=triplet"],
        ["encoder=gru", "negatives=in_batch", "loss=infonce"],
        ["encoder=lstm", "negatives=in_batch", "loss=triplet", "loss.in_batch=all"],
        ["encoder=bigru", "negatives=random", "loss=infonce", "model.shared_towers=false", "encoder.pooling=last"],
        ["encoder=bilstm", "negatives=random", "negatives.per_query=2", "encoder.pooling=max", "embeddings.freeze=true"],
        ["encoder=lstm", "encoder.bag_dim=8", "encoder.bag_stemmer=english", "model.shared_towers=false"],
        ["optimizer=sgd", "scheduler=cosine"],
        ["optimizer=adamw", "scheduler=warmup_linear"],
    ],
    ids=lambda o: " ".join(o),
)
def test_fast_dev_run(overrides, tiny_cfg):
    metrics = train(tiny_cfg("debug=fast_dev_run", *overrides))
    assert torch.isfinite(torch.tensor(metrics["train/loss_epoch"]))


def test_fast_dev_run_says_what_it_ran(tiny_cfg, caplog):
    """debug=fast_dev_run's one validation batch is part of the corpus, which is not ranked: the run warned 'Training ended
    before any validation ... let it run to an epoch's end', of the smoke test the docs offer."""
    import logging

    with caplog.at_level(logging.INFO):
        train(tiny_cfg("debug=fast_dev_run", "data.eval_batch_size=4"))  # validation passages in several batches, as on real data
    assert "Training ended before any validation" not in caplog.text
    assert "fast_dev_run: one training and one validation batch ran (a smoke test)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):  # Lightning's fast_dev_run=N runs N of each: it said "one"
        train(tiny_cfg("debug=fast_dev_run", "trainer.fast_dev_run=2", "data.eval_batch_size=4"))
    assert "fast_dev_run: 2 training and validation batches each ran (a smoke test)" in caplog.text


def test_model_learns_far_above_random(tmp_path):
    cfg = compose_train(
        tmp_path,
        ["data.synthetic_rows.train_rows=2000", "data.synthetic_rows.val_rows=300", "data.batch_size=64", "trainer.max_epochs=6", "encoder.hidden_size=64", "encoder.dim=64", "embeddings.dim=32"],
    )
    metrics = train(cfg)
    corpus = 300 * 8
    random_mrr = sum(1 / r for r in range(1, 11)) / corpus  # expected MRR@10 of a random ranking, one positive
    assert random_mrr < 0.002
    assert metrics["val/mrr@10"] > 0.3, metrics
    assert metrics["val/recall@100"] > 0.8, metrics


def test_the_optimized_metric_returned_is_the_best_validation_not_the_last(tiny_cfg):
    """What train() returns (and train.py gives a sweeper) for optimized_metric is the best validation's value, the
    epoch the checkpoint callback kept: Lightning's callback_metrics hold the last validation's, so a trial that
    peaked before its last epoch was reported lower than its kept checkpoint (and higher again once resumed)."""
    import pandas as pd

    cfg = tiny_cfg("logger=csv", "trainer.max_epochs=4", "optimizer.lr=0.03")
    metrics = train(cfg)
    per_epoch = pd.read_csv(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")["val/mrr@10"].dropna().tolist()
    assert len(per_epoch) == 4 and max(per_epoch) > per_epoch[-1]  # the case: the peak is not the last epoch
    assert metrics["val/mrr@10"] == pytest.approx(max(per_epoch))
    assert metrics["val_last/mrr@10"] == pytest.approx(per_epoch[-1])
    # Every val/* is that same validation's (the run's last figures under val_last/*): the others were the last epoch's
    logged = pd.read_csv(Path(cfg.paths.output_dir) / "csv" / "metrics.csv").dropna(subset=["val/mrr@10"])
    best_row, last_row = logged.loc[logged["val/mrr@10"].idxmax()], logged.iloc[-1]
    names = [c for c in logged.columns if c.startswith("val/")]
    assert len(names) >= 5 and best_row["val/ndcg@10"] != last_row["val/ndcg@10"]
    assert {n: metrics[n] for n in names} == pytest.approx({n: float(best_row[n]) for n in names})
    assert {n: metrics["val_last/" + n[4:]] for n in names} == pytest.approx({n: float(last_row[n]) for n in names})
    kept = [p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").glob("epoch*.ckpt")]
    assert kept == [f"epoch{per_epoch.index(max(per_epoch)):02d}-mrr{max(per_epoch):.4f}.ckpt"]


def test_every_epoch_logs_where_its_time_went(straight_run):
    import pandas as pd

    metrics, run = straight_run(["trainer.max_epochs=3", "logger=csv"])  # a run other tests read too
    logged = pd.read_csv(run / "csv" / "metrics.csv")
    for key in ("time/epoch_train_seconds", "time/validation_seconds"):
        per_epoch = logged.dropna(subset=[key])
        assert sorted(per_epoch["epoch"]) == [0, 1, 2], key  # once per epoch, sanity check not counted
        assert (per_epoch[key] > 0).all() and key in metrics
    # Training and validation are split, not double counted: together they fit in the run's own clock.
    total = logged["time/epoch_train_seconds"].sum() + logged["time/validation_seconds"].sum()
    assert total <= metrics["time/train_seconds"]


def test_resume_continues_step_and_epoch(tmp_path, straight_run):
    first = compose_train(tmp_path, ["trainer.max_epochs=2"])
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    steps_per_epoch = state["global_step"] // 2
    assert state["epoch"] == 1 and steps_per_epoch > 0
    assert "tokenizer" in state and state["tokenizer"]["words"][:2] == ["<pad>", "<unk>"]

    resumed = compose_train(tmp_path, ["trainer.max_epochs=3", f"ckpt_path={last}"])
    resumed_metrics = train(resumed)
    state = torch.load(last, weights_only=False)
    assert state["epoch"] == 2
    assert state["global_step"] == 3 * steps_per_epoch

    # Stopping after epoch 2 and resuming ends exactly where an uninterrupted run does.
    straight, _ = straight_run(["trainer.max_epochs=3"])
    for key in ("val/mrr@10", "val/recall@10", "train/loss_epoch"):
        assert resumed_metrics[key] == straight[key], key


def test_frozen_vectors_stay_out_of_checkpoints_and_load_exactly(tmp_path):
    """Frozen word vectors from a file are derived again on load, not saved (two_tower.model.frozen_rows):
    evaluate reproduces the logged validation figures from the checkpoint, a run resumes from it, and a
    changed vectors file is refused in one line."""
    import json

    from tests.test_retrieval import compose_retrieval
    from two_tower.data import synthetic
    from two_tower.retrieval.evaluate import evaluate

    rng = np.random.default_rng(0)
    words = [*synthetic.vocabulary(200 * 5), *synthetic.FILLER]  # every word of the synthetic rows (200 topics of 5)
    vectors = tmp_path / "vectors.txt"
    vectors.write_text(f"{len(words)} 16\n" + "".join(f"{w} " + " ".join(f"{v:.4f}" for v in rng.normal(size=16)) + "\n" for w in words))
    overrides = ["embeddings=file", f"embeddings.path={vectors}", "embeddings.freeze=true", "model.hash_buckets=512"]
    cfg = compose_train(tmp_path, overrides)
    metrics = train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    tables = [k for k in state["derived_rows"] if k.endswith("words.weight")]
    assert tables and not set(tables) & set(state["state_dict"])

    data = tmp_path / "data"
    data.mkdir()
    (data / "validation-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic.split_of(cfg.data.synthetic_rows, "validation")))
    scored = evaluate(compose_retrieval("evaluate", [f"ckpt={last}", f"data.path={data}", f"out={tmp_path / 'eval'}"]))["dense"]
    logged = {k.removeprefix("val/"): v for k, v in metrics.items() if k.startswith("val/")}
    assert {k: scored[k] for k in logged} == pytest.approx(logged, abs=1e-6)

    resumed = train(compose_train(tmp_path, [*overrides, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert torch.load(last, weights_only=True)["epoch"] == 1 and np.isfinite(resumed["val/mrr@10"])

    # The vectors file changed since training: loading refuses in one line naming the checkpoint and the rows.
    from two_tower.core.errors import CheckpointError
    from two_tower.data.embeddings import _load_extension_source
    from two_tower.retrieval.checkpoint import load_checkpoint

    lines = vectors.read_text().splitlines()
    word = lines[1].split()[0]
    lines[1] = word + " " + " ".join(["0.5"] * 16)
    vectors.write_text("\n".join(lines) + "\n")
    _load_extension_source.cache_clear()
    with pytest.raises(CheckpointError, match=rf"^ckpt={last}: towers\.\S*words\.weight: the word rows derived again .* not the ones the model was trained with"):
        load_checkpoint(last)
    # Resuming says so too, naming the checkpoint, before the trainer starts.
    from two_tower.core.errors import EmbeddingsError

    with pytest.raises(EmbeddingsError, match=rf"^ckpt_path={last}: towers\.\S*words\.weight: the word rows derived again"):
        train(compose_train(tmp_path, [*overrides, "trainer.max_epochs=3", f"ckpt_path={last}"]))


def test_same_seed_same_metrics(tmp_path):
    runs = [train(compose_train(tmp_path / str(i), ["trainer.max_epochs=2", "seed=7"])) for i in range(2)]
    keys = [k for k in runs[0] if k.startswith(("val/", "train/"))]
    assert keys and all(runs[0][k] == runs[1][k] for k in keys)
    other = train(compose_train(tmp_path / "other", ["trainer.max_epochs=2", "seed=8"]))
    assert other["train/loss_epoch"] != runs[0]["train/loss_epoch"]


def test_wandb_offline_logs_and_closes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    metrics = train(compose_train(tmp_path, ["logger=wandb"]))
    assert "val/mrr@10" in metrics
    assert wandb.run is None  # task_wrapper finished it
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


@pytest.mark.slow
def test_multirun_sweeps_each_job_into_its_own_dir(tmp_path):
    run_tiny_multirun(tmp_path, "csv", ["encoder=rnn,gru", "negatives=random,in_batch"])
    jobs = sorted(p for p in (tmp_path / "multirun").iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").exists()
        assert (job / "csv" / "metrics.csv").read_text().count("val/mrr@10") == 1


def test_data_preparation_drawing_random_numbers_does_not_change_the_run(tmp_path, monkeypatch):
    """A cache miss may draw from the global generators while preparing data (distilling, mining) and a
    cache hit does not: the model must start from the same weights either way."""
    from two_tower.data.datamodule import TwoTowerDataModule

    first = train(compose_train(tmp_path / "first", ["trainer.max_epochs=1", "+trainer.limit_train_batches=3"]))
    cfg = compose_train(tmp_path / "second", ["trainer.max_epochs=1", "+trainer.limit_train_batches=3"])
    setup = TwoTowerDataModule.setup

    def setup_drawing(self, stage=None):
        setup(self, stage)
        torch.rand(1000), np.random.rand(1000), random.random()  # what a cold cache's preparation might draw

    monkeypatch.setattr(TwoTowerDataModule, "setup", setup_drawing)
    second = train(cfg)
    assert second["val/mrr@10"] == first["val/mrr@10"] and second["train/loss_epoch"] == first["train/loss_epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("target,sig", [("launcher", "SIGTERM"), ("other rank", "SIGTERM"), ("other rank", "SIGINT")])
def test_ddp_stops_on_sigterm_in_every_process_at_the_same_step(tmp_path, target, sig):
    """Lightning's SIGTERM handler ran a broadcast inside the signal handler, interleaved with the collective the
    process was in: a SIGTERM to another rank alone hung the run every time (to the launcher: 1 in 4), until
    SIGKILL. Now every process stops after the same batch: exit 143, one resume hint, a whole checkpoint. So does a
    Ctrl-C to another rank alone, exit 1 (Ctrl-C's): that process ended alone, and the run with it (the launcher's error
    line, status 2), with nothing saved since the last validation."""
    import signal as signals

    run = tmp_path / "run"
    settings = [t for t in TINY if not t.startswith("trainer.max_epochs")]
    cmd = [sys.executable, "train.py", *settings, "trainer.max_epochs=40", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"]
    # Ctrl-C as from a terminal: a suite started in the background by a script hands its processes SIGINT ignored, which
    # train.py then keeps ignoring, as a background job should (the run went on to its end: a false failure)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signals.signal(signals.SIGINT, signals.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "last.ckpt").exists():  # the end of epoch 0: training is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:] if proc.poll() is not None else "no checkpoint"
            time.sleep(0.2)
        time.sleep(1.0)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1, children
        os.kill(proc.pid if target == "launcher" else int(children[0]), getattr(signals, sig))
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signals.SIGKILL)
            proc.wait()
    assert proc.returncode == (143 if sig == "SIGTERM" else 1), output[-3000:]
    assert output.count(f"Stopped by {'SIGTERM' if sig == 'SIGTERM' else 'Ctrl-C'} before training ended") == 1, output[-3000:]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert 0 < state["global_step"] and state["epoch"] < 39
    assert subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True).returncode == 1  # no process left


def test_ddp_with_fewer_batches_than_processes_is_refused_once_before_they_start(tmp_path):
    """Data that would leave a process no batch is one error line, before Lightning starts the other processes
    (each process printed it, after ~10 s of starting them); the kept run folder's log says why it stopped."""
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", *TINY, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "data.batch_size=1000",
           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "fewer than the 2 processes, so no process would train" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Initializing distributed" not in done.stdout + done.stderr
    assert (run / "train.log").read_text().rstrip().endswith(errors[0])


@pytest.mark.slow
def test_ddp_with_the_progress_bar_ends(tmp_path):
    """The epoch's train/* and time/* figures were logged with sync_dist=True, which Lightning reduces when a value is
    first read; its progress bar reads the metrics at an epoch's end on rank 0 alone, so rank 0 waited in a collective
    the other process never joined (a 2-process experiment=best run hung after its first epoch; the other DDP tests
    run without the bar). Now they are reduced in hooks every process runs; the run ends, within the timeout."""
    import pandas as pd

    settings = [o for o in TINY if not o.startswith("+trainer.enable_progress_bar")] + [
        "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_epochs=2", "logger=csv"]
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "train.py", *settings, f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    assert metrics["train/loss_epoch"].notna().sum() == 2 and metrics["time/epoch_train_seconds"].notna().sum() == 2
    assert "sync_dist" not in done.stdout + done.stderr


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_reports_once(ddp_run):
    """trainer=ddp with two CPU processes (Lightning starts the second by running train.py again): the run
    ends, each process had validation batches, and the data summary and final metrics are logged once."""
    output = ddp_run["output"]
    assert ddp_run["returncode"] == 0, output[-3000:]
    assert output.count("Final metrics") == 1 and output.count("[train] rows:") == 1
    assert re.search(r"'val/mrr@10': 0\.\d+", output)
    # +trainer.enable_progress_bar=false (TINY): no bar of either process, the data preparation's neither
    # ("Reading train rows:   0%|", tokenizing), which went on being drawn
    assert not re.search(r"\d+%\|", output), output[-3000:]
    assert list((ddp_run["run"] / "checkpoints").glob("epoch*.ckpt"))
    # Nothing of Lightning's or torch's about how this project uses them: "use sync_dist=True" for the training
    # means and timings (rank 0's share was logged), DDP's broadcast_buffers and all_gather deprecations (torch 2.13)
    for said in ("sync_dist=True", "broadcast_buffers", "is deprecated"):
        assert said not in output, output[max(0, output.index(said) - 300):][:600]


# train.py with a fault at a training step in one process: DDP starts the other processes by running this script again,
# so the fault is injected in every process and fires only in the one named.
_FAULT_AT_STEP = '''
import os, signal, sys
sys.path.insert(0, {root!r})
from two_tower.core.errors import DataSourceError
from two_tower.training import callbacks

def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
    if trainer.global_rank == {rank} and trainer.global_step == {step}:
        if {fault!r} == "error":
            raise DataSourceError("bad row 7 in rank {rank}'s batch")
        os.kill(os.getpid(), signal.SIGKILL)

callbacks.EpochTimings.on_train_batch_start = on_train_batch_start
from two_tower.cli.train import main
main()
'''


@pytest.mark.slow
@pytest.mark.parametrize("rank,fault", [(1, "error"), (1, "SIGKILL"), (0, "error")])
def test_ddp_process_that_fails_is_one_line_not_every_process_traceback(tmp_path, rank, fault):
    """A process that failed or was killed made every other fail in its next collective with gloo's 'Connection closed
    by peer' traceback: rank 1's error line was followed by rank 0's traceback and status 1, rank 0's error line by
    rank 1's traceback, and rank 1 killed gave rank 0's traceback alone. Now: one `error:` line (the failed process's,
    or the launcher's naming it and the checkpoint to resume from), status 2, no traceback, no process left."""
    import signal

    run = tmp_path / "run"
    script = tmp_path / "faulty_train.py"
    script.write_text(_FAULT_AT_STEP.format(root=str(ROOT), rank=rank, step=7, fault=fault))  # 5 steps an epoch: in epoch 1
    cmd = [sys.executable, str(script), *[t for t in TINY if not t.startswith("trainer.max_epochs")], "trainer.max_epochs=3", "trainer=ddp",
           "trainer.devices=2", "trainer.accelerator=cpu", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = stdout + stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output and len(errors) == 1, output[-3000:]
    if fault == "error":
        assert errors[0] == f"error: bad row 7 in rank {rank}'s batch"
    else:
        assert errors[0].startswith("error: the training process of rank 1 was killed by SIGKILL"), errors
        assert f"{run / 'checkpoints' / 'last.ckpt'} (the last checkpoint written, whole) resumes it" in errors[0]
        assert f"ckpt_path=last hydra.run.dir={run}" in errors[0]
    deadline = time.monotonic() + 60  # a process that lost the launcher ends on its own, just after it
    while subprocess.run(["pgrep", "-f", str(script)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "a process of the run is left"
        time.sleep(0.5)


def test_progress_bars_turned_off_for_a_run_are_as_before_afterwards(monkeypatch):
    """trainer.enable_progress_bar=false turns off every bar of the run (tqdm's switch, which the processes it starts
    inherit; Hugging Face's), and only for the run: a caller in the same process keeps its bars."""
    import datasets
    from huggingface_hub import utils as hub

    from two_tower.core import progress

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    with progress.turned_off():
        assert progress.bar(range(3)).disable and not progress.shown() and not datasets.is_progress_bar_enabled()
        assert hub.are_progress_bars_disabled()  # the Hub's downloads (a review: it read its variable on import)
        assert subprocess.run([sys.executable, "-c", "from tqdm import tqdm; print(tqdm(range(3)).disable)"],
                              capture_output=True, text=True).stdout.strip() == "True"
    assert progress.shown() and "TQDM_DISABLE" not in os.environ and datasets.is_progress_bar_enabled() and not hub.are_progress_bars_disabled()
    assert not progress.bar(range(3)).disable
    with progress.turned_off(when=False):
        assert progress.shown()
    # transformers keeps a switch of its own, copied from the Hub's when imported: imported before the block (a
    # multirun's earlier job), its "Loading weights" bar was drawn in every job of a sweep
    from transformers.utils import logging as transformers_logging

    assert transformers_logging.is_progress_bar_enabled()
    with progress.turned_off():
        assert not transformers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled() and not hub.are_progress_bars_disabled()
    # a library's plain tqdm bar (tqdm imported long before: it read TQDM_DISABLE then): model2vec's while distilling
    from tqdm import tqdm

    with progress.turned_off():
        assert tqdm(range(3)).disable and tqdm(range(3), None, None, True, None, None, 0.1, 10.0, None, None, False).disable
    with open(os.devnull, "w") as sink:
        assert not tqdm(range(3), file=sink).disable
        # two threads' blocks that overlap and end in the order they began (a review: the second restored the first's
        # patch, and every later bar of the process was off)
        import threading

        from tqdm import std

        own = std.tqdm.__dict__["__init__"]
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

        def first():
            with progress.turned_off():
                a_in.set()
                b_in.wait(10)
            a_out.set()

        inside = []

        def second():
            a_in.wait(10)
            with progress.turned_off():
                b_in.set()
                a_out.wait(10)
                inside.append(tqdm(range(3), file=sink).disable)  # still inside a block

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert inside == [True] and std.tqdm.__dict__["__init__"] is own and not tqdm(range(3), file=sink).disable


def test_train_leaves_the_calling_process_random_generators_as_they_were(tiny_cfg):
    """train() called from Python reseeded the caller's random, numpy and torch generators to the run's seed
    (Lightning's seed_everything) and advanced them: a notebook's next shuffle or sample depended on the run."""
    import random

    import numpy as np
    import torch

    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    train(tiny_cfg("debug=fast_dev_run", "seed=5"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_train_leaves_the_calling_process_cuda_seed_as_it_was(tiny_cfg, monkeypatch):
    """CUDA not initialised before train() (a CPU run on a GPU machine, or a GPU run that initialises it) is seeded
    when first used with the latest torch.manual_seed's seed, queued for it: after train() that was the run's
    (seed_everything), so the caller's CUDA generators were the run's, not its own."""
    import torch

    if torch.cuda.is_initialized():
        pytest.skip("CUDA was initialised before this test: its generators' states are put back instead")
    seeds = []
    seed_all = torch.cuda.manual_seed_all
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: (seeds.append(int(seed)), seed_all(seed))[1])
    torch.manual_seed(13)
    train(tiny_cfg("debug=fast_dev_run", "seed=5"))
    assert 5 in seeds and seeds[-1] == 13
    assert torch.initial_seed() == 13


def test_train_leaves_the_calling_process_threads_and_environment_as_they_were(tiny_cfg, monkeypatch):
    """train() called from Python (a notebook) left torch at its ``threads=1`` and Lightning's PL_GLOBAL_SEED /
    PL_SEED_WORKERS in os.environ (a later seed_everything() without a seed took the run's)."""
    import os

    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.setenv("PL_SEED_WORKERS", "0")
    torch.set_num_threads(2 if before != 2 else 3)
    wanted = torch.get_num_threads()
    try:
        train(tiny_cfg("debug=fast_dev_run", "threads=1"))
        assert torch.get_num_threads() == wanted
        assert "PL_GLOBAL_SEED" not in os.environ and os.environ["PL_SEED_WORKERS"] == "0"
    finally:
        torch.set_num_threads(before)


def test_a_max_epochs_that_is_not_a_multiple_of_the_validation_interval_is_warned_about(tiny_cfg, caplog):
    """trainer.check_val_every_n_epoch=2 with trainer.max_epochs=3 trained a third epoch that no checkpoint held:
    Lightning validates (and so writes last.ckpt and the best checkpoint) after every second epoch only, and an index
    built from last.ckpt was the second epoch's model (a probe). The run now says so when it starts."""
    import logging

    from two_tower.training.config import unvalidated_epochs

    message = unvalidated_epochs(tiny_cfg("trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2"))
    assert message.startswith("trainer.max_epochs=3 is not a multiple of trainer.check_val_every_n_epoch=2: the last 1 epoch(s)")
    assert "hold epoch 2 at most" in message
    for fine in (("trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2"), ("trainer.max_epochs=3",), ("trainer.max_epochs=-1", "trainer.check_val_every_n_epoch=2")):
        assert unvalidated_epochs(tiny_cfg(*fine)) is None, fine
    with caplog.at_level(logging.WARNING, logger="two_tower"):
        train(tiny_cfg("trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2"))
    assert any(r.getMessage() == message for r in caplog.records)


def test_lightning_lines_are_printed_once_and_without_adverts():
    """The ``lightning`` package's own console handler printed each of its lines a second time beside the root
    logger's (Hydra's) handlers; its litlogger advert and its note on the configs' ModelSummary showed at every fit."""
    import logging

    import lightning

    from two_tower.training.console import quiet_lightning

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    root, package = logging.getLogger(), logging.getLogger("lightning")
    lines = Lines()
    root.addHandler(lines)
    had_console = lightning._console in package.handlers
    try:
        package.addHandler(lightning._console)  # as `import lightning` leaves it
        quiet_lightning()
        quiet_lightning()  # idempotent
        assert lightning._console not in package.handlers
        rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        assert sum(type(f).__name__ == "_DropAdverts" for f in rank_zero.filters) == 1
        level = rank_zero.level
        rank_zero.setLevel(logging.INFO)
        for line in ("Seed set to 7", "💡 Tip: For seamless cloud logging ... litlogger",
                     "Trainer already configured with model summary callbacks: [ModelSummary]. Skipping ..."):
            rank_zero.info(line)
        rank_zero.setLevel(level)
        assert lines.lines == ["Seed set to 7"]
    finally:
        root.removeHandler(lines)
        if had_console and lightning._console not in package.handlers:
            package.addHandler(lightning._console)


@pytest.mark.parametrize("shown", [True, False])
def test_the_model_summary_is_plain_text_in_the_log_unless_turned_off(tmp_path, caplog, shown):
    """The configs' ModelSummary callback writes the summary through logging (train.log); Lightning's flag
    trainer.enable_model_summary=false, which only stops Lightning adding its own, turns it off too (a review: the
    configured callback printed it whatever the flag said)."""
    from conftest import compose_train

    cfg = compose_train(tmp_path, [f"trainer.enable_model_summary={str(shown).lower()}"])
    with caplog.at_level(logging.INFO, logger="lightning"):
        train(cfg)
    assert ("Trainable params" in caplog.text) == shown
