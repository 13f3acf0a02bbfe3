"""Optuna sweeps (hparams_search=optuna) and W&B tracking (group, tags, model artifact, examples table)."""

import json
import os
import re
import time

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import CONF, compose_train, run_tiny_multirun
from two_tower.training.tracking import ValidationExamples


def test_optuna_search_config():
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/mrr@10" and sweeper.storage is None
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    assert set(sweeper.params) == {"optimizer.lr", "encoder.hidden_size", "encoder.dropout", "loss.temperature", "embeddings.freeze"}
    assert sweeper.params["optimizer.lr"].startswith("tag(log, interval(")


def test_optuna_space_naming_a_setting_the_loss_lacks_is_refused(tmp_path):
    """loss=triplet has no loss.temperature, which the search space tunes: one line before any trial
    (Hydra would fail the first trial with "Could not override"), not a sweep of nothing."""
    import subprocess
    import sys

    from omegaconf import open_dict

    from tests.conftest import ROOT
    from two_tower.core.errors import ConfigError
    from two_tower.training.config import check_sweep_space

    def composed(*overrides):
        return composed_train("hparams_search=optuna", *overrides)

    check_sweep_space(composed())  # infonce has loss.temperature
    # Options of a group the sweep chooses among: every combination is composed and checked.
    swept = composed()
    with open_dict(swept):
        swept.hydra.overrides.task = ["loss=infonce,triplet", "encoder=gru,lstm", "optimizer.lr=0.1,0.2", "seed=3"]
    seen = []

    def compose_trial(overrides):
        seen.append(overrides)
        return composed(*overrides)

    with pytest.raises(ConfigError, match=r"names loss\.temperature, a setting loss=triplet does not have"):
        check_sweep_space(swept, compose=compose_trial)
    assert seen[:2] == [["seed=3", "loss=infonce", "encoder=gru"], ["seed=3", "loss=infonce", "encoder=lstm"]]
    triplet = composed("loss=triplet")
    with pytest.raises(ConfigError, match=r"names loss\.temperature, a setting loss=triplet does not have \(loss has margin, in_batch\)"):
        check_sweep_space(triplet)
    with open_dict(triplet):
        del triplet.hydra.sweeper.params["loss.temperature"]
        triplet.hydra.sweeper.params["loss.margin"] = "interval(0.05, 0.5)"
        triplet.hydra.sweeper.params["encoder"] = "choice(gru, lstm)"  # a group option, not a setting
    check_sweep_space(triplet)

    sweep = tmp_path / "multirun"
    cmd = [sys.executable, "train.py", "-m", "hparams_search=optuna", "loss=triplet", *TINY_SWEEP, f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hydra.sweeper.params: the search space names loss.temperature")
    assert "Could not override" not in result.stderr + result.stdout and not sweep.exists()

    # The sweep chooses the loss (a sweep argument): each option the trials can take is checked, not the first.
    cmd = [sys.executable, "train.py", "-m", "hparams_search=optuna", "loss=infonce,triplet", *TINY_SWEEP, f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "names loss.temperature, a setting loss=triplet does not have" in lines[0], result.stderr[-2000:]
    assert not sweep.exists()


def composed_train(*overrides):
    """The train config for ``overrides`` with its hydra node (as a Hydra callback sees it at a multirun's start)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


TINY_SWEEP = ["data=synthetic", "embeddings=random", "logger=none", "trainer.max_epochs=1", "hydra.sweeper.n_trials=1"]


def test_a_sweep_value_that_makes_a_job_invalid_is_refused_before_any_job(tmp_path):
    """data.batch_size=32,-1,16: job 0 trained, job 1 failed and job 2 never ran. Every listed value is checked first,
    also those of a search space's choice()."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    sweep = tmp_path / "multirun"
    base = [sys.executable, "train.py", "-m", "data=synthetic", "embeddings=random", "logger=none", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}"]
    result = subprocess.run([*base, "data.batch_size=32,-1,16", "seed=1,2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines == ["error: the sweep's jobs with data.batch_size=-1: data.batch_size=-1: must be a positive integer"], result.stderr[-2000:]
    assert not sweep.exists()
    # with logger=wandb the check read the W&B run's name, ${hydra:job.override_dirname}, which has no value before a
    # job: Hydra took the error for a callback's warning and job 0 trained (a probe)
    result = subprocess.run([*base, "data.batch_size=32,-1", "logger=wandb"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "WANDB_MODE": "offline"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines == ["error: the sweep's jobs with data.batch_size=-1: data.batch_size=-1: must be a positive integer"], result.stderr[-2000:]
    assert not sweep.exists()
    result = subprocess.run([*base, "hparams_search=optuna", "hydra.sweeper.n_trials=1", "encoder.dropout=choice(0.1,1.5)"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines == ["error: the sweep's jobs with encoder.dropout=1.5: encoder.dropout=1.5: must be a number in [0, 1)"], result.stderr[-2000:]


def test_a_sweep_whose_jobs_would_not_be_the_runs_asked_for_is_refused_before_any_job(tmp_path):
    """A probe: a fixed logger.wandb.id put every job in one W&B run; ckpt_path=last without the sweep's folder (or with
    a folder where no job has a checkpoint) trained every job from the start and exited 0."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    sweep = tmp_path / "multirun"
    base = [sys.executable, "train.py", "-m", "data=synthetic", "embeddings=random", "trainer.max_epochs=1", "seed=1,2"]
    for extra, line in [
        (["logger=wandb", "logger.wandb.id=sameid01", f"hydra.sweep.dir={sweep}"],
         "error: logger.wandb.id=sameid01 in a sweep: every job would log to that one W&B run"),
        (["logger=none", "ckpt_path=last", f"hydra.sweep.dir={sweep}"],
         f"error: ckpt_path=last: no job of the sweep in hydra.sweep.dir={sweep} has a checkpoint to resume"),
        (["logger=none", "ckpt_path=last", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=x${hydra.job.num}"],
         f"error: ckpt_path=last: no job of the sweep in hydra.sweep.dir={sweep} has a checkpoint to resume"),
    ]:
        result = subprocess.run([*base, *extra], cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "offline"})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(line), (extra, result.stderr[-2000:])
        assert not any(sweep.rglob("*.ckpt"))
    # without hydra.sweep.dir: a new timestamped folder, named so (run from tmp_path, where Hydra's outputs go)
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *base[2:], "logger=none", "ckpt_path=last"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "has a checkpoint to resume" in result.stderr and "(a new folder: hydra.sweep.dir was not given)" \
        in result.stderr, result.stderr[-2000:]
    # an id made of each job's values is each job's own (a review: s${seed} was refused as s42), and an id naming
    # ${hydra:job.num} no longer turns the checks before the jobs into a warning (job 0 trained, job 1 was refused)
    result = subprocess.run([*base[:-1], "seed=1", "logger=wandb", "logger.wandb.id=j${hydra:job.num}", "data.batch_size=32,-1",
                             f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "offline"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines == ["error: the sweep's jobs with data.batch_size=-1: data.batch_size=-1: must be a positive integer"], result.stderr[-2000:]
    from omegaconf import OmegaConf

    from two_tower.core.errors import ConfigError
    from two_tower.training.config import check_sweep_runs

    sweep_of = lambda *task: OmegaConf.merge(composed_train("logger=wandb", *[t for t in task if "," not in t]),  # noqa: E731
                                             {"hydra": {"overrides": {"task": list(task)}}})
    check_sweep_runs(sweep_of("logger.wandb.id=s${seed}", "seed=1,2"))  # each job's own id
    check_sweep_runs(sweep_of("logger.wandb.id=j${hydra:job.num}", "optimizer.lr=0.1,0.01"))
    with pytest.raises(ConfigError, match=r"logger.wandb.id=s\$\{seed\} in a sweep: every job would log to that one W&B run"):
        check_sweep_runs(sweep_of("logger.wandb.id=s${seed}", "optimizer.lr=0.1,0.01"))  # the seed is not swept: one id


def test_sweeps_that_cannot_run_as_asked_are_refused_before_any_trial(tmp_path, monkeypatch):
    """A probe's findings, each once a traceback or a silent single run: an interval end outside a setting's rule
    (trial 2 drew a negative dropout and the sweep died, losing the study), n_trials=0 or limit_val_batches=0 (every
    trial failed, then Optuna's 'No trials are completed yet'), an SQL storage this Optuna cannot open (a traceback
    and an unusable optuna.db), and hparams_search / a launcher without -m (one plain run, exit 0)."""
    import subprocess
    import sys

    import optuna

    from tests.conftest import ROOT
    from two_tower.training.config import sql_storage_problem

    sweep = tmp_path / "multirun"
    base = [sys.executable, "train.py", "-m", *TINY_SWEEP, "hparams_search=optuna", f"hydra.sweep.dir={sweep}"]
    for extra, line in [
        (["encoder.dropout=interval(-0.9, 0.9)"], "error: the sweep's jobs with encoder.dropout=-0.9 (an end of encoder.dropout=interval(-0.9, 0.9), "
                                                  "which the search may draw): encoder.dropout=-0.9: must be a number in [0, 1)"),
        (["encoder.hidden_size=range(0, 64, 32)"], "error: the sweep's jobs with encoder.hidden_size=0 (an end of encoder.hidden_size=range(0, 64, 32)"),
        # Optuna draws a range's stop too (a review: range(0.5, 1.0, 0.5) passed the check and its first trial drew 1.0)
        (["encoder.dropout=range(0.5, 1.0, 0.5)"], "error: the sweep's jobs with encoder.dropout=1.0 (an end of encoder.dropout=range(0.5, 1.0, 0.5), "
                                                   "which the search may draw): encoder.dropout=1.0: must be a number in [0, 1)"),
        (["hydra.sweeper.n_trials=0"], "error: hydra.sweeper.n_trials=0: must be an integer >= 1"),
        (["+trainer.limit_val_batches=0"], "error: trainer.limit_val_batches=0: the sweep maximises val/mrr@10, which only validation gives"),
    ]:
        result = subprocess.run([*base, *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(line), (extra, result.stderr[-2000:])
        assert not sweep.exists()

    # The storage check tries a throwaway SQLite file: a failure of this Optuna with this SQLAlchemy is one line.
    def broken(url, *args, **kwargs):
        assert url.startswith("sqlite:///") and "optuna.db" not in url  # never the user's database
        raise AssertionError()

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    assert sql_storage_problem().startswith(f"Optuna {optuna.__version__} cannot open an SQL storage with SQLAlchemy ")

    for argv, chosen in ((["hparams_search=optuna"], "hparams_search=optuna"), (["hydra/launcher=slurm"], "hydra/launcher=slurm")):
        result = subprocess.run([sys.executable, "train.py", *TINY_SWEEP[:-1], *argv, f"hydra.run.dir={tmp_path / 'single'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [
            f"error: {chosen} chooses {'how a sweep searches' if 'optuna' in chosen else 'where a sweep runs its jobs'}; add -m to run it as one "
            f"(python train.py -m {chosen} ...), or leave it out for a single run"], result.stderr[-2000:]
        assert not (tmp_path / "single").exists()


def test_a_slurm_sweep_that_cannot_be_submitted_is_one_line_before_any_job(tmp_path, monkeypatch):
    """No srun here: submitit's RuntimeError traceback after writing multirun.yaml; trainer=ddp's devices='auto': an
    interpolation traceback over gpus_per_node. Both are refused before any job."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import ROOT
    from two_tower.core.errors import ConfigError
    from two_tower.training.config import check_launcher

    sweep = tmp_path / "multirun"
    result = subprocess.run([sys.executable, "train.py", "-m", *TINY_SWEEP[:-1], "hydra/launcher=slurm", "encoder=rnn,gru", f"hydra.sweep.dir={sweep}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": os.path.dirname(sys.executable)})
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: hydra/launcher=slurm: no srun on this machine (not a SLURM login node); submit from one, or drop hydra/launcher=slurm "
        "to run the sweep's jobs here one after another"], result.stderr[-2000:]
    assert not sweep.exists()

    def composed(*overrides):
        return composed_train("hydra/launcher=slurm", *overrides)

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")  # a SLURM login node
    check_launcher(composed("trainer=ddp", "trainer.devices=4"))
    with pytest.raises(ConfigError, match=r"^trainer.devices='auto': hydra/launcher=slurm asks each node for that many GPUs"):
        check_launcher(composed("trainer=ddp"))


def test_a_local_sweep_of_multi_process_runs_is_one_line_before_any_job(tmp_path, monkeypatch):
    """Lightning starts a DDP run's other processes by running the command again, -m and the sweep's values included:
    each ran the whole sweep on its own (a probe: a second multirun folder of their logs, multirun.yaml overwritten).
    Refused before any job (or at the job whose swept trainer.devices asks for it); a SLURM sweep is not."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from two_tower.core.errors import ConfigError
    from two_tower.training.config import check_sweep_processes

    sweep = tmp_path / "multirun"
    result = subprocess.run([sys.executable, "train.py", "-m", *TINY_SWEEP[:-1], "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                             "seed=1,2", f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: trainer.devices=2 (x trainer.num_nodes=1): a sweep (-m) of runs of 2 processes each cannot run on this machine: Lightning "
        "starts a run's other processes by running this command again, so each would run the whole sweep; run each configuration "
        "without -m, or sweep with hydra/launcher=slurm (SLURM starts each run's processes)"], result.stderr[-2000:]
    assert not sweep.exists()
    local = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    check_sweep_processes(composed_train("trainer=ddp", "trainer.devices=1", "trainer.accelerator=cpu").trainer, local)
    check_sweep_processes(composed_train("trainer=ddp", "trainer.devices=4").trainer, "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher")
    with pytest.raises(ConfigError, match=r"^trainer.devices=2 \(x trainer.num_nodes=2\): a sweep \(-m\) of runs of 4 processes"):
        check_sweep_processes(composed_train("trainer=ddp", "trainer.devices=2", "trainer.num_nodes=2").trainer, local)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "1")  # torchrun started every process: each runs the sweep, as meant
    check_sweep_processes(composed_train("trainer=ddp", "trainer.devices=2").trainer, local)


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials(tmp_path):
    """A real 2-trial sweep (in-memory storage) on tiny synthetic data, logged to W&B offline: ~15 s unloaded."""
    run_tiny_multirun(tmp_path, "wandb", ["hparams_search=optuna", "hydra.sweeper.n_trials=2"], env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    # One offline W&B run per trial, both in the sweep's group (<job name>-<sweep dir name>).
    runs = sorted((tmp_path / "multirun").glob("*/wandb/offline-run-*/*.wandb"))
    assert len(runs) == 2 and all(b"train-multirun" in r.read_bytes() for r in runs)
    jobs = sorted(p.name for p in (tmp_path / "multirun").iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1"]
    results = yaml.safe_load((tmp_path / "multirun" / "optimization_results.yaml").read_text())
    assert 0 <= results["best_value"] <= 1
    # encoder.hidden_size is fixed by TINY's override (the sweeper does not search a key set on the command line).
    assert set(results["best_params"]) == {"optimizer.lr", "encoder.dropout", "loss.temperature", "embeddings.freeze"}


def test_wandb_group_tags_examples_table_and_model_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    import two_tower.training.train as train_module

    seen = {"tables": []}

    class Spy(ValidationExamples):
        def on_validation_epoch_end(self, trainer, pl_module):
            self.last_table = None
            super().on_validation_epoch_end(trainer, pl_module)
            if self.last_table is not None:
                seen["tables"].append(self.last_table)
                experiment = trainer.logger.experiment
                seen["tags"], seen["group"], seen["id"] = list(experiment.tags), experiment.group, experiment.id

    real = train_module.tracking_callbacks
    monkeypatch.setattr(train_module, "tracking_callbacks", lambda loggers: [Spy() if isinstance(c, ValidationExamples) else c for c in real(loggers)])
    cfg = compose_train(tmp_path, ["logger=wandb", "logger.wandb.log_model=true", "trainer.max_epochs=2", "encoder=lstm"])
    metrics = train_module.train(cfg)
    assert "val/mrr@10" in metrics and wandb.run is None

    # Tags: the chosen options; group: the run (a multirun's jobs share the sweep dir's name).
    assert {"encoder:lstm", "negatives:in_batch", "loss:infonce", "embeddings:random", "data:synthetic"} <= set(seen["tags"])
    assert re.fullmatch(r"\w+-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", seen["group"])  # <job name>-<run dir name>
    assert cfg.logger.wandb.group == seen["group"]  # also in the logged config
    # The configuration key (all overrides but the seed) as a tag, to group one configuration's seeds.
    config_tags = [t for t in seen["tags"] if t.startswith("config:")]
    assert len(config_tags) == 1 and len(config_tags[0]) <= 64 and "seed=" not in config_tags[0]
    assert config_tags[0].startswith("config:data.batch_size=32 ")  # sorted overrides; a long key ends in a hash

    # One table per validation epoch: 5 queries x (query + 3 hits x (passage, score, selected)).
    assert len(seen["tables"]) == 2
    table = seen["tables"][-1]
    assert table.columns == ["query"] + [f"{c}_{k}" for k in (1, 2, 3) for c in ("passage", "score", "selected")]
    assert len(table.data) == 5
    for row in table.data:
        assert isinstance(row[0], str) and row[0]
        scores = row[2::3]
        assert scores == sorted(scores, reverse=True) and all(isinstance(s, bool) for s in row[3::3])

    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert len(list((runs[0] / "files" / "media" / "table" / "val").glob("examples_*.table.json"))) == 2
    # The checkpoints were logged as the model artifact (WandbLogger's log_model), the best one aliased "best".
    best = next((tmp_path / "run" / "checkpoints").glob("epoch*.ckpt")).name
    # wandb-core writes the offline record in a process of its own; on a loaded machine its last records
    # can land after the run has finished, so read the file again until they are there (or 120 s pass).
    record_file, record = next(runs[0].glob("*.wandb")), b""
    for _ in range(240):
        record = record_file.read_bytes()
        if f"model-{seen['id']}".encode() in record and b"encoder:lstm" in record:
            break
        time.sleep(0.5)
    assert f"model-{seen['id']}".encode() in record and best.encode() in record and b"best" in record
    assert b"encoder:lstm" in record
    assert b"config_key" in record  # and as a config value


def test_no_tracking_without_wandb_or_hydra(tiny_cfg):
    from two_tower.training.tracking import fill_wandb_group_and_tags, tracking_callbacks

    cfg = tiny_cfg()  # logger=none
    fill_wandb_group_and_tags(cfg)
    assert tracking_callbacks([]) == []
    cfg = tiny_cfg("logger=wandb", "logger.wandb.group=mine", "logger.wandb.tags=[a]")
    fill_wandb_group_and_tags(cfg)  # explicit values win
    assert cfg.logger.wandb.group == "mine" and list(cfg.logger.wandb.tags) == ["a"]


def test_compare_tables_logged_to_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    import pandas as pd
    import wandb

    from two_tower.training.compare import log_wandb

    summary = pd.DataFrame({"system": ["encoder=gru", "bm25"], "test/mrr@10": [0.86, 0.85]})
    tests = pd.DataFrame({"A": ["encoder=gru"], "B": ["bm25"], "p (randomization)": [0.7], "significant (Holm, alpha=0.05)": [False]})
    log_wandb(summary, tests, "test/mrr@10", "two-tower-test", tmp_path)
    assert wandb.run is None  # finished
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = sorted(p.name.split("_")[0] for p in (runs[0] / "files" / "media" / "table" / "compare").glob("*.table.json"))
    assert tables == ["configurations", "tests"]
    logged = (runs[0] / "files" / "media" / "table" / "compare")
    assert "encoder=gru" in next(logged.glob("configurations_*.table.json")).read_text()


def test_wandb_online_without_an_account_is_refused_before_any_data(tmp_path):
    """No W&B account and no terminal to ask at: wandb's UsageError came when the logger first logged, after the
    data had loaded (a traceback per process, exit 1). A process of its own: wandb keeps login state per process.
    Offline mode needs no account (the other tests here)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT, TINY

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "none"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"))
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "train.py", *TINY, "logger=wandb", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: logger=wandb: No API key configured"), result.stderr[-2000:]
    assert "WANDB_MODE=offline" in result.stderr and "Traceback" not in result.stderr
    assert not run.exists() and not (tmp_path / "cache").exists()  # refused before the run folder was kept or any data


def test_only_the_best_checkpoint_by_the_optimized_metric_is_aliased_best(tmp_path, monkeypatch):
    """log_model=true: the best checkpoint was logged ["latest", "best"], and then last.ckpt was too (the last_checkpoint
    callback, monitor: null, counts it as its own best), so `best` ended on last.ckpt, a later and maybe worse epoch.
    Read back from the offline run's records: `best` on the monitored callback's checkpoint alone, `latest` on
    last.ckpt, the newest."""
    from tests.conftest import wandb_records
    from two_tower.training.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(compose_train(tmp_path, ["logger=wandb", "logger.wandb.log_model=true"]))
    best = next((tmp_path / "run" / "checkpoints").glob("epoch*.ckpt")).name
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    logged = [(json.loads(r.artifact.metadata)["original_filename"], sorted(r.artifact.aliases))
              for r in wandb_records(run) if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]
    assert logged == [(best, ["best", "latest"]), ("last.ckpt", ["latest"])], logged
    # model_checkpoint.save_last=true: last.ckpt is also the monitoring callback's file; logged once, not twice (a review)
    other = tmp_path / "save_last"
    train(compose_train(other, ["logger=wandb", "logger.wandb.log_model=true", "callbacks.model_checkpoint.save_last=true"]))
    (run,) = (other / "run" / "wandb").glob("offline-run-*")
    names = [json.loads(r.artifact.metadata)["original_filename"] for r in wandb_records(run) if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]
    assert names.count("last.ckpt") == 1, names


def test_an_explicit_wandb_id_is_recorded_so_a_resume_without_it_logs_to_the_same_run(tmp_path):
    """An explicit logger.wandb.id was not written to wandb/run_id, so a resume that left it out drew a new id: a second
    W&B run of the job (a review)."""
    from two_tower.training.tracking import fill_wandb_run_id

    assert fill_wandb_run_id(compose_train(tmp_path, ["logger=wandb", "logger.wandb.id=chosen1"]), resuming=False) == "chosen1"
    assert (tmp_path / "run" / "wandb" / "run_id").read_text().strip() == "chosen1"
    resumed = compose_train(tmp_path, ["logger=wandb", "ckpt_path=last"])
    assert fill_wandb_run_id(resumed, resuming=True) == "chosen1" and resumed.logger.wandb.id == "chosen1"


def test_a_run_stopped_by_sigterm_and_resumed_is_one_wandb_run_whose_stop_is_not_a_finish(tmp_path, monkeypatch):
    """A run stopped by SIGTERM and resumed with ckpt_path=last made two W&B runs in its group (epoch 0 in one, the
    rest in the other), and the stopped one's exit record said 0, as a finished run's. Now the run folder records its
    W&B run id (wandb/run_id) and the resume logs to that run; the stop is recorded with the process's status, 143."""
    import two_tower.training.train as train_module
    from tests.conftest import wandb_records
    from tests.test_reliability import SigtermAtStep
    from two_tower.training import utils

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    common = ["logger=wandb", "trainer.max_epochs=2"]
    stopped = compose_train(tmp_path, common)
    original = utils.instantiate_group
    with monkeypatch.context() as patch:  # SIGTERM after step 13: in epoch 1 (ten steps an epoch)
        patch.setattr(train_module, "instantiate_group", lambda c: original(c) + ([SigtermAtStep(13)] if c is stopped.get("callbacks") else []))
        with pytest.raises(SystemExit) as stop:
            train_module.train(stopped)
    assert stop.value.code == 143
    metrics = train_module.train(compose_train(tmp_path, [*common, "ckpt_path=last"]))
    assert "val/mrr@10" in metrics

    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))  # one folder per process; named by start time
    assert len(runs) == 2
    seen = []
    for run in runs:
        records = wandb_records(run)
        ids = {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"}
        exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
        seen.append((ids, exits))
    assert [exits for _, exits in seen] == [[143], [0]], seen
    assert len(seen[0][0]) == 1 and seen[0][0] == seen[1][0], seen  # one W&B run: the offline folders sync into it
    assert seen[0][0] == {(tmp_path / "run" / "wandb" / "run_id").read_text().strip()}


@pytest.mark.parametrize("problem,message", [
    ("WANDB_MODE=bogus", "logger=wandb: WANDB_MODE=bogus: not a W&B mode; W&B takes online, offline"),  # two pydantic tracebacks
    ("WANDB_MODE=OFFLINE", "logger=wandb: WANDB_MODE=OFFLINE: not a W&B mode"),  # W&B's modes are lower case
    ("no wandb", "logger=wandb: the wandb package cannot be imported"),  # offline: an InstantiationException after the data
])
def test_wandb_that_cannot_start_is_one_line_before_any_data(tmp_path, monkeypatch, problem, message):
    import sys

    from two_tower.core.errors import ConfigError
    from two_tower.training.train import train

    monkeypatch.setenv("WANDB_MODE", problem.split("=")[1] if "=" in problem else "offline")
    if problem == "no wandb":
        monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ModuleNotFoundError
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        train(compose_train(tmp_path, ["logger=wandb"]))
    assert not (tmp_path / "cache").exists()  # before any data was read


def test_a_wandb_run_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    """An API key set and no network: wandb.init waited for its init_timeout, then raised CommError (tracebacks)."""
    import wandb

    from two_tower.core.errors import TrackingError
    from two_tower.training.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")

    def no_network(**kwargs):
        raise wandb.errors.CommError("Run initialization has timed out after 90.0 sec. Please try increasing the timeout")

    monkeypatch.setattr(wandb, "init", no_network)
    with pytest.raises(TrackingError, match=r"^logger=wandb: W&B could not start the run: CommError: Run initialization has timed out .* WANDB_MODE=offline"):
        train(compose_train(tmp_path, ["logger=wandb"]))
    assert wandb.run is None


def test_compare_to_wandb_that_cannot_log_is_one_line_before_its_files(tmp_path):
    """--wandb-project online without an account was a UsageError traceback, exit 1, after the files were written (train.py
    says it in one line); a bad WANDB_MODE, two pydantic tracebacks. A process of its own: wandb keeps login state per process."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.test_compare import difficulty, seed_table, write_run

    for seed in (1, 2):
        write_run(tmp_path / f"a{seed}", ["encoder=gru", f"seed={seed}"], seed_table(difficulty(), 0.0, seed))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "none"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"))
    out = tmp_path / "cmp"
    for extra, message in (({}, "error: --wandb-project P: No API key configured"), ({"WANDB_MODE": "bogus"}, "error: --wandb-project P: WANDB_MODE=bogus: not a W&B mode")):
        result = subprocess.run([sys.executable, "-m", "two_tower.cli.compare", str(tmp_path / "a1"), str(tmp_path / "a2"), "--wandb-project", "P",
                                 "--out", str(out), "--resamples", "100"], cwd=ROOT, env={**env, **extra}, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]
        assert not out.exists()  # refused before the work


def test_summarize_on_a_run_without_a_csv_log_is_one_line(tmp_path):
    """logger=wandb writes no csv/metrics.csv: experiments/summarize.py failed with a FileNotFoundError traceback."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- logger=wandb\n")
    (run / "wandb").mkdir()
    out = tmp_path / "summary"
    result = subprocess.run([sys.executable, "experiments/summarize.py", str(run), "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"error: {run}: no csv/metrics.csv") and "logger=[csv,wandb]" in lines[0]
    assert not out.exists()


def test_summarize_names_runs_of_one_label_apart(tmp_path):
    """Two runs whose overrides differ only where the label does not look (data.path, a repeat) were two rows of one
    name, and one curve: the second run's replaced the first's in the plots (a probe)."""
    import subprocess
    import sys

    import pandas as pd

    from tests.conftest import ROOT

    for name, mrr in (("rA", 0.09), ("rB", 0.52)):
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- data.path=/data/{name}\n")
        (run / "csv").mkdir()
        pd.DataFrame({"epoch": [0], "step": [10], "val/mrr@10": [mrr], "train/loss_step": [1.0]}).to_csv(run / "csv" / "metrics.csv", index=False)
    out = tmp_path / "summary"
    result = subprocess.run([sys.executable, "experiments/summarize.py", str(tmp_path / "rA"), str(tmp_path / "rB"), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(out / "summary.csv")
    assert sorted(table["run"]) == ["(defaults) (rA)", "(defaults) (rB)"] and sorted(table["val/mrr@10"]) == [0.09, 0.52]


def test_summarize_lists_unfinished_runs_and_leaves_out_failed_ones(tmp_path):
    """A run stopped before its first validation (no val/mrr@10 column) was a KeyError traceback; one sweep job that
    failed before logging (no metrics.csv) refused the whole summary, blaming logger=wandb; a killed run was listed
    with no word that it had not ended (a probe)."""
    import subprocess
    import sys

    import pandas as pd

    from tests.conftest import ROOT

    for name, columns, ended in (("done", {"val/mrr@10": [0.5]}, True), ("killed", {"val/mrr@10": [0.4]}, False), ("early", {}, False), ("failed", None, False)):
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- seed={len(name)}\n")
        if columns is not None:
            (run / "csv").mkdir()
            pd.DataFrame({"epoch": [0], "step": [10], "train/loss_step": [1.0], **columns}).to_csv(run / "csv" / "metrics.csv", index=False)
        if ended:
            (run / "per_query").mkdir()
            (run / "per_query" / "fit_ended.json").write_text("{}")
    out = tmp_path / "summary"
    result = subprocess.run([sys.executable, "experiments/summarize.py", *(str(tmp_path / n) for n in ("done", "killed", "early", "failed")), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"warning: {tmp_path / 'failed'} left out: no csv/metrics.csv" in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    table = pd.read_csv(out / "summary.csv").set_index("dir")
    assert table["ended"].to_dict() == {str(tmp_path / "done"): "yes", str(tmp_path / "killed"): "no", str(tmp_path / "early"): "no"}
    assert table["epochs"].to_dict() == {str(tmp_path / "done"): 1, str(tmp_path / "killed"): 1, str(tmp_path / "early"): 0}


def test_a_sweep_check_that_cannot_run_is_said_and_the_others_still_run(monkeypatch, caplog, capsys):
    """Hydra takes an exception in a callback for a warning: one check reading a value with no value before the jobs
    (three such cases were found) skipped every check after it. Now that check is said, and the rest run."""
    import two_tower.training.config as config_module
    from two_tower.cli.train import CheckSweepSpace
    from two_tower.core.errors import ConfigError

    ran = []

    def broken(cfg):
        raise RuntimeError("no value before the jobs")

    def refusing(cfg, compose):
        ran.append("values")
        raise ConfigError("the sweep's jobs with x=1: bad")

    monkeypatch.setattr(config_module, "check_sweep_runs", broken)
    monkeypatch.setattr(config_module, "check_sweep_values", refusing)
    with caplog.at_level("WARNING"), pytest.raises(SystemExit) as stopped:
        CheckSweepSpace().on_multirun_start(composed_train("data=synthetic"))
    assert stopped.value.code == 2 and ran == ["values"]
    assert "a check of the sweep's settings before its jobs could not run (RuntimeError: no value before the jobs)" in caplog.text
    assert capsys.readouterr().err.strip() == "error: the sweep's jobs with x=1: bad"
