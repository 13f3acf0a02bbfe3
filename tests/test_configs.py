"""Every option of every config group composes and instantiates."""

import re

import hydra
import pytest
import torch
from torch import nn

from tests.conftest import CONF
from two_tower.training.config import validate_train_config

GROUPS = ["data", "embeddings", "encoder", "negatives", "loss", "optimizer", "scheduler", "logger", "trainer", "callbacks", "debug", "experiment", "hparams_search"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_group_option_composes_and_instantiates(group, option, tiny_cfg, tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"")
    extra = {
        ("data", "local"): ["data.path=/somewhere"],
        ("embeddings", "file"): [f"embeddings.path={tmp_path}/v.txt"],
        ("negatives", "ann"): [f"negatives.checkpoint={tmp_path}/model.ckpt"],
    }
    cfg = tiny_cfg(f"{group}={option}", *extra.get((group, option), []))
    part = cfg.get(group)
    if group == "encoder":
        enc = hydra.utils.instantiate(part, embedding=nn.Embedding(10, 4))
        assert enc(torch.tensor([[2, 3]]), torch.tensor([2])).shape == (1, enc.output_dim)
    elif group == "optimizer":
        opt = hydra.utils.instantiate(part)([nn.Parameter(torch.zeros(1))])
        assert isinstance(opt, torch.optim.Optimizer)
    elif group == "scheduler":
        if part:
            opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
            sched = hydra.utils.instantiate(part)(opt, total_steps=10)
            for _ in range(10):
                opt.step()
                sched.step()
            assert opt.param_groups[0]["lr"] < 1.0
    elif group in ("logger", "callbacks"):
        for entry in (part or {}).values():
            assert "_target_" in entry
    elif group == "data":
        assert cfg.data._target_.endswith("TwoTowerDataModule")
    elif group == "trainer":
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    elif group == "debug":
        assert cfg.trainer.get("fast_dev_run") or cfg.data.max_train_rows == 128  # overfit: a few rows (Lightning's overfit_batches is refused)
        validate_train_config(cfg)
    elif group == "experiment":
        assert cfg.trainer.max_epochs >= 1 and cfg.encoder.cell in ("rnn", "gru", "lstm")
    elif group == "hparams_search":
        assert cfg.optimized_metric == "val/mrr@10"
    elif group == "embeddings" and option == "file":
        assert cfg.embeddings.path.endswith("v.txt")
    else:
        assert hydra.utils.instantiate(part) is not None


def test_defaults_are_documented_combination(tiny_cfg):
    cfg = tiny_cfg()
    assert cfg.optimized_metric == "val/mrr@10"
    assert cfg.encoder.cell == "gru" and cfg.negatives.per_query == 0


def test_bidirectional_options():
    assert {"bigru", "bilstm"} <= set(options("encoder"))
    assert (CONF / "encoder" / "bigru.yaml").read_text().count("bidirectional: true") == 1


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], return_hydra_config=True)
        one_gpu = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)  # the default trainer: no num_nodes before
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert (one_gpu.hydra.launcher.nodes, one_gpu.hydra.launcher.tasks_per_node) == (1, 1)


def test_a_range_is_stated_once_for_configs_and_constructors(tiny_cfg):
    """The config check and the constructors refuse an out-of-range value with the same rule and words
    (two_tower/core/checks.py), and the encoder's cell names are the rule's."""
    from two_tower.core.checks import CELLS
    from two_tower.core.errors import ConfigError
    from two_tower.model.encoders import CELLS as CELL_MODULES
    from two_tower.model.encoders import RNNEncoder
    from two_tower.model.embedding import OpenEmbedding
    from two_tower.model.losses import DistillLoss, InfoNCELoss, TripletLoss
    from two_tower.training.config import validate_train_config

    assert set(CELL_MODULES) == set(CELLS)
    cases = [
        ("encoder.bag_mix", 1.5, [], lambda: RNNEncoder(OpenEmbedding(10, 4), bag_dim=8, bag_mix=1.5)),
        ("encoder.pooling", "sum", [], lambda: RNNEncoder(OpenEmbedding(10, 4), pooling="sum")),
        ("loss.temperature", -0.1, [], lambda: InfoNCELoss(temperature=-0.1)),
        ("loss.label_weight", 2.0, ["loss=distill"], lambda: DistillLoss(label_weight=2.0)),
        ("loss.margin_weight", 1.5, ["loss=distill_margin"], lambda: DistillLoss(margin_weight=1.5)),
        ("loss.margin_weight", -0.1, ["loss=distill"], lambda: DistillLoss(margin_weight=-0.1)),
        ("loss.learn_margin_scale", "yes", ["loss=distill_margin"], lambda: DistillLoss(learn_margin_scale="yes")),
        ("loss.margin_pairs", "hard", ["loss=distill_margin"], lambda: DistillLoss(margin_pairs="hard")),
        ("loss.query_relation_weight", -0.5, ["loss=distill"], lambda: DistillLoss(query_relation_weight=-0.5)),
        ("loss.margin", -1.0, ["loss=triplet"], lambda: TripletLoss(margin=-1.0)),
    ]
    for key, value, group, build in cases:
        with pytest.raises(ConfigError) as from_python:
            build()
        with pytest.raises(ConfigError) as from_config:
            validate_train_config(tiny_cfg(*group, f"{key}={value}"))
        assert str(from_python.value) == str(from_config.value) and str(from_python.value).startswith(f"{key}={value!r}: must be")


def test_null_is_refused_unless_the_rule_says_what_it_means(tiny_cfg):
    """A rule's null passed for every key: optimizer.lr=null, data.batch_size=null ... ended in a traceback after the
    data had loaded, embeddings.freeze=null and model.hash_buckets=null were accepted. Now null passes only where
    the rule says what it means ("or null"), and every such rule is NULLABLE."""
    from two_tower.core.checks import NULLABLE, RULES
    from two_tower.core.errors import ConfigError
    from two_tower.training.config import validate_train_config

    assert sorted(NULLABLE) == sorted(key for key, (_, _, meaning) in RULES.items() if "null" in meaning)
    for key in ("optimizer.lr", "data.batch_size", "encoder.hidden_size", "encoder.num_layers", "encoder.cell", "seed",
                "data.eval_batch_size", "data.tokenizer.min_freq", "loss.temperature", "embeddings.freeze", "model.hash_buckets",
                "data.tokenizer.max_query_len"):
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=null: must be "):
            validate_train_config(tiny_cfg(f"{key}=null"))
    validate_train_config(tiny_cfg("threads=null", "data.max_train_rows=null", "data.max_val_rows=null"))


def test_embeddings_dim_null_is_a_vectors_files_own_width_only(tiny_cfg):
    """embeddings.dim=null (the rule's "a vectors file's own") was accepted for every source: embeddings=random and
    word2vec ended in a TypeError traceback after the data was prepared (exit 1), glove in 'config says dim=None' after
    it. Now only embeddings=file takes it; the others are one line before any data."""
    from two_tower.core.errors import ConfigError
    from two_tower.training.config import validate_train_config

    for option in ("random", "glove", "word2vec"):
        with pytest.raises(ConfigError, match=rf"^embeddings.dim=null: embeddings={option} needs the word vectors' width"):
            validate_train_config(tiny_cfg(f"embeddings={option}", "embeddings.dim=null"))
    validate_train_config(tiny_cfg("embeddings=file", "embeddings.path=vectors.txt", "embeddings.dim=null"))


def test_a_glove_width_the_package_does_not_have_is_refused_before_any_data(tiny_cfg):
    """embeddings=glove embeddings.dim=100: 'GloVe vectors have 50 dims, config says dim=100' came only after the rows
    were read and tokenized. Now it is the config check's line, the width read from the package's vectors file."""
    from two_tower.core.errors import ConfigError
    from two_tower.data.embeddings import GloveEmbeddings
    from two_tower.training.config import validate_train_config

    width = GloveEmbeddings.width()
    with pytest.raises(ConfigError, match=rf"^embeddings.dim={width + 1}: .*GloVe .* have {width} dims"):
        validate_train_config(tiny_cfg("embeddings=glove", f"embeddings.dim={width + 1}"))
    validate_train_config(tiny_cfg("embeddings=glove", f"embeddings.dim={width}"))


def test_distill_margin_config_is_distill_with_margin_mse(tiny_cfg):
    """loss=distill_margin is loss=distill with the MarginMSE teacher term, and is accepted by the config check
    (alone and over an experiment that overrides the loss); loss=distill stays KL only."""
    from two_tower.model.losses import DistillLoss
    from two_tower.training.config import validate_train_config

    assert tiny_cfg("loss=distill").loss.margin_weight == 0.0
    cfg = tiny_cfg("loss=distill_margin")
    loss = hydra.utils.instantiate(cfg.loss)
    assert isinstance(loss, DistillLoss) and loss.margin_weight == 1.0 and cfg.teacher
    validate_train_config(cfg)
    best = tiny_cfg("experiment=best", "loss=distill_margin", "encoder.dim=null")  # TINY's encoder.dim: the skip path has none
    assert best.loss.margin_weight == 1.0 and best.loss.temperature == 0.05 and best.data.pseudo_queries.count > 0
    assert best.loss.query_relation_weight == 1.0 and tiny_cfg("experiment=best_without_query_relations").loss.query_relation_weight == 0.0
    validate_train_config(best)


def test_hybrid_fuses_dense_with_stemmed_bm25_and_keeps_the_plain_baseline():
    """retriever=[dense,bm25,hybrid]: plain bm25 stays the BEIR baseline (no stemmer); the hybrids fuse
    the dense model with bm25_stemmed, which is bm25 plus the English stemmer and nothing else."""
    from tests.test_retrieval import compose_retrieval

    retriever = compose_retrieval("evaluate", ["ckpt=x.ckpt", "data.path=d", "retriever=[dense,bm25,hybrid]"]).retriever
    assert list(retriever) == ["dense", "bm25", "bm25_stemmed", "hybrid_rrf", "hybrid_weighted"]
    assert retriever.bm25.stemmer is None and retriever.bm25_stemmed.stemmer == "english"
    assert {k: v for k, v in retriever.bm25_stemmed.items() if k != "stemmer"} == {k: v for k, v in retriever.bm25.items() if k != "stemmer"}
    assert list(retriever.hybrid_rrf.parts) == list(retriever.hybrid_weighted.parts) == ["dense", "bm25_stemmed"]
    assert list(retriever.hybrid_weighted.weights) == [0.7, 0.3]


def help_groups(script):
    """``python SCRIPT --help``'s "Configuration groups" section: group -> [(option, extra overrides)]."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    text = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    section = text.split("== Configuration groups", 1)[1].split("\n==", 1)[0]
    groups = {}
    for line in section.splitlines()[1:]:
        match = re.match(r"^([\w/]+): (.+)$", line)
        if match:
            with_ = re.search(r"\(with ([^)]*)\)", match.group(2))
            options_ = [o.split(" (")[0].strip() for o in re.sub(r"\(with [^)]*\)", "", match.group(2)).split(",")]
            groups[match.group(1)] = [(o, with_.group(1).split() if with_ else []) for o in options_ if o]
    return groups


@pytest.mark.parametrize("script,config_name", [("train.py", "train"), ("index.py", "index"), ("evaluate.py", "evaluate")])
def test_help_lists_only_groups_the_command_takes(script, config_name):
    """A probe: index.py --help and evaluate.py --help listed train.py's groups (encoder, trainer, experiment, ...),
    train.py --help the retriever, prf, rerank and smooth groups of the others: each refused by that command."""
    from two_tower.cli.common import compose, composition_error

    groups = help_groups(script)
    assert groups, f"{script} --help lists no configuration group"
    for group, listed in groups.items():
        for option, extra in listed:
            overrides = [f"{group}={option}", *[e for e in extra if e != "-m"]]
            if "-m" in extra:  # a sweeper or launcher: composes, and only a sweep runs it
                compose(config_name, overrides)
            else:
                assert composition_error(config_name, overrides) is None, (script, overrides)
    from two_tower.cli.common import COMMAND_GROUPS

    assert sorted(g for g in groups if not g.startswith("hydra/")) == sorted(COMMAND_GROUPS[config_name]), script  # what the command refuses
    if config_name == "train":  # every option of train's groups is listed
        for group in GROUPS:
            assert sorted(o for o, _ in groups[group]) == options(group), group


def test_help_into_a_closed_pipe_stops_quietly_with_a_pipeline_writers_status():
    """``index.py --help | head -1`` ended in a BrokenPipeError traceback from Hydra's print (a probe)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    process = subprocess.Popen([sys.executable, "index.py", "--help"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the help is written
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and "Traceback" not in stderr, stderr


@pytest.mark.parametrize("name", ["index", "search", "serve"])  # the --help of Hydra's commands (train, index, evaluate) has one mechanism
def test_usage_and_help_name_the_command_as_it_was_run(name):
    """Run as an installed command (pyproject's two-tower-search, ...), where no search.py exists to run, --help and
    the usage lines said ``python search.py``; run from a clone (index.py here), they still say it."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    installed = f"import sys; sys.argv[0] = '/usr/local/bin/two-tower-{name}'; from two_tower.cli.{name} import main; sys.exit(main())"
    runs = [([sys.executable, "-c", installed, "--help"], True)] + ([([sys.executable, f"{name}.py", "--help"], False)] if name == "index" else [])
    for argv, as_installed in runs:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        said = done.stdout + done.stderr
        assert (f"two-tower-{name} " in said) == as_installed and (f"python {name}.py " in said) != as_installed, said[-2000:]
    if name == "search":  # run as a module, it says so (a review: "python search.py")
        done = subprocess.run([sys.executable, "-m", "two_tower.cli.search", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert "usage: python -m two_tower.cli.search index=DIR" in done.stdout, done.stdout[:500]


def test_an_index_folder_error_names_the_index_command_as_installed(tmp_path, monkeypatch):
    """Index folder errors said "rebuild it with index.py" where the installed two-tower-index ran and no index.py exists."""
    import sys

    from two_tower.core.errors import IndexFolderError
    from two_tower.retrieval.index import PassageIndex

    for argv0, said in (("/usr/local/bin/two-tower-search", "build one with two-tower-index"), ("search.py", "build one with python index.py")):
        monkeypatch.setattr(sys, "argv", [argv0])
        with pytest.raises(IndexFolderError, match=said):
            PassageIndex.load(tmp_path)


def test_commands_import_lightning_without_transformers_and_a_teacher_still_loads():
    """torchmetrics imports transformers with Lightning (for metrics no command uses), seconds of every command's
    start; a command keeps it from doing so, and sentence-transformers (a teacher) still imports transformers."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import sys\n"
        "from two_tower.cli.startup import skip_torchmetrics_transformers as skip\n"
        "assert skip()\n"
        "assert not skip()  # once: torchmetrics is imported\n"
        "import lightning\n"
        "assert 'transformers' not in sys.modules\n"
        "from torchmetrics.utilities.imports import _TRANSFORMERS_GREATER_EQUAL_4_4\n"
        "assert not _TRANSFORMERS_GREATER_EQUAL_4_4\n"
        "from sentence_transformers import SentenceTransformer\n"
        "from transformers import AutoModel\n"
        "import importlib.metadata, lightning_utilities.core.imports as i\n"
        "assert i._version('transformers') == importlib.metadata.version('transformers')  # put back\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr[-3000:]


def test_a_missing_checkpoint_is_refused_before_lightning_is_imported():
    """index.py, evaluate.py, search.py ckpt=MISSING imported Lightning (seconds) before finding that the file is not there."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import sys\n"
        "from two_tower.core.errors import CheckpointError\n"
        "from two_tower.retrieval.checkpoint import load_checkpoint\n"
        "try:\n"
        "    load_checkpoint('/nonexistent/last.ckpt')\n"
        "except CheckpointError as err:\n"
        "    assert 'no such checkpoint file' in str(err), err\n"
        "else:\n"
        "    raise SystemExit('not refused')\n"
        "assert 'lightning' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr[-3000:]


def test_the_group_settings_overrides_are_checked_against_are_the_settings_dataclasses_fields():
    """search.py, serve.py and index.py check prf.*, rerank.* and smooth.* overrides against the keys of the groups'
    files (conf/prf/*.yaml, ...), since importing the settings dataclasses imports torch: the two name the same
    settings, in the same order (the order an "unknown setting" line lists them in)."""
    from dataclasses import fields

    from two_tower.cli.common import command_group_settings
    from two_tower.retrieval.maxsim import MaxSimRerank
    from two_tower.retrieval.prf import RocchioPRF
    from two_tower.retrieval.smoothing import NeighbourSmoothing

    fields_of = {cls.GROUP: [f.name for f in fields(cls)] for cls in (RocchioPRF, MaxSimRerank, NeighbourSmoothing)}
    assert command_group_settings("search") == command_group_settings("serve") == {"prf": fields_of["prf"], "rerank": fields_of["rerank"]}
    assert command_group_settings("index") == {"smooth": fields_of["smooth"]}
    assert command_group_settings("train") == command_group_settings("evaluate") == {}


def test_search_serve_and_index_refuse_a_bad_override_and_print_help_without_importing_the_retrieval_stack():
    """They imported torch, faiss, bm25s and datasets (~4 s) before checking their overrides; checked in a fresh
    process, as each command line runs."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import sys\n"
        "from two_tower.cli.index import main as index\n"
        "from two_tower.cli.search import main as search\n"
        "from two_tower.cli.serve import main as serve\n"
        "def status(run, argv):\n"
        "    sys.argv = ['command.py', *argv]\n"
        "    try:\n"
        "        return run() if run is index else run(argv)\n"
        "    except SystemExit as stop:\n"
        "        return stop.code\n"
        "runs = [(search, ['bogus=1']), (search, ['prf=rocchio', 'prf.foo=1']), (search, ['--help']), (serve, ['index=X', 'bogus=1']),\n"
        "        (serve, ['index=X', 'rerank.depth=3']), (serve, ['--help']), (index, ['bogus=1']), (index, ['ckpt=x', 'smooth=neighbours', 'smooth.x=1']), (index, ['--help']),\n"
        "        (search, ['a question'])]\n"
        "statuses = [status(run, argv) for run, argv in runs]\n"
        "print(statuses, [m for m in ('torch', 'faiss', 'bm25s', 'datasets') if m in sys.modules], file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr.splitlines()[-1] == "[2, 2, 0, 2, 2, 0, 2, 2, 0, 2] []", result.stderr[-3000:]
    assert "error: prf.foo: unknown setting; prf has depth, alpha, beta" in result.stderr
    assert "error: rerank.depth: a setting of the rerank group, which is off; select it first" in result.stderr
    assert "error: smooth.x: unknown setting; smooth has neighbours, weight" in result.stderr
    assert "error: which index? pass index=DIR" in result.stderr  # search.py without index= (it imported datasets first)


def test_ctrl_c_before_a_commands_task_takes_over_is_one_line(monkeypatch, tmp_path, capsys):
    """Ctrl-C while a Hydra command starts (its overrides' check, Hydra's set-up, the task's imports: index.py's first
    seconds) is one 'interrupted' line and status 130, as later in the command: it was a KeyboardInterrupt traceback
    (status -2)."""
    from two_tower.cli import startup
    from two_tower.cli.index import main

    def pressed():
        raise KeyboardInterrupt

    monkeypatch.setattr(startup, "skip_torchmetrics_transformers", pressed)  # the first thing the task does
    monkeypatch.setattr("sys.argv", ["index.py", "ckpt=x.ckpt", "corpus=c.tsv", f"out={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}"])
    try:
        with pytest.raises(SystemExit) as stop:
            main()
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C before the task's own handler was a traceback")
    assert stop.value.code == 130 and capsys.readouterr().err.splitlines()[-1] == "interrupted"
    assert not (tmp_path / "out").exists()


def test_a_command_line_skips_torchmetrics_transformers_once_its_overrides_pass_and_a_call_from_python_does_not(monkeypatch, tiny_cfg, tmp_path):
    from tests.conftest import TINY
    from two_tower.cli import startup
    from two_tower.cli.train import main

    calls = []
    monkeypatch.setattr(startup, "skip_torchmetrics_transformers", lambda: calls.append(1))
    monkeypatch.setattr("two_tower.training.train.train", lambda cfg: {"val/mrr@10": 0.0})
    monkeypatch.setattr("sys.argv", ["train.py", "bogus=1"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2 and calls == []  # refused first: a bad override stays a quick line
    monkeypatch.setattr("sys.argv", ["train.py", *TINY, f"hydra.run.dir={tmp_path / 'run'}"])
    main()
    assert calls == [1]
    main(tiny_cfg())  # a cfg passed from Python
    assert calls == [1]


def test_a_path_or_split_setting_the_command_line_reads_as_a_number_is_one_line(capsys):
    """Hydra reads data.path=2024 as a number and out=true as a boolean: every command failed deep inside with
    "TypeError: expected str, bytes or os.PathLike object" and exit 1 (a helper's probe). Now one line, the value as
    typed, and how to quote it; a list where a split name goes, and a split that must exist set to null, alike."""
    from two_tower.cli.common import composition_error
    from two_tower.cli.search import main as search_main

    assert composition_error("train", ["data.path=2024"]) == "data.path=2024: must be a path, and the command line read it as int: quote it (data.path='2024')"
    assert composition_error("train", ["ckpt_path=1.5"]).startswith("ckpt_path=1.5: must be a path")
    assert composition_error("index", ["ckpt=x.ckpt", "corpus=c.tsv", "out=true"]) == "out=true: must be a path, and the command line read it as bool: quote it (out='true')"
    assert composition_error("evaluate", ["data.path=123"]).startswith("data.path=123: must be a path")
    assert composition_error("train", ["data.train_split=[a,b]"]) == "data.train_split=[a,b]: must be a split name, not a list"
    assert composition_error("train", ["data.val_split=null"]) == "data.val_split=null: must be a split name"
    assert composition_error("train", ["data.path='2024'", "data.test_split=null"]) is None  # quoted: a path; no test split
    assert search_main(["index=123", "hello"]) == 2
    assert "index=123: must be a path" in capsys.readouterr().err


def test_out_null_is_one_line():
    """index.py and evaluate.py out=null (where they write) is one line before any work: it was a TypeError traceback
    after the checkpoint's path was checked, status 1, and the run folder was left."""
    from two_tower.cli.common import composition_error

    assert composition_error("index", ["ckpt=x.ckpt", "corpus=c.tsv", "out=null"]) == "out=null: must be a path"
    assert composition_error("evaluate", ["ckpt=x.ckpt", "out=null"]) == "out=null: must be a path"
    assert composition_error("index", ["ckpt=x.ckpt", "corpus=null", "out=o"]) is None  # data.path= instead


def test_a_run_folder_that_is_an_index_folder_is_one_line(tmp_path):
    """hydra.run.dir=<an index folder> wrote the command's log (index.log, evaluate.log) into it, and search.py and serve.py
    then refused the folder (its manifest does not name it): refused before Hydra makes anything."""
    from two_tower.cli.common import composition_error

    folder = tmp_path / "index"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    for name, settings in (("index", ["ckpt=x.ckpt", "corpus=c.tsv", f"out={tmp_path / 'o'}"]), ("evaluate", ["ckpt=x.ckpt"]), ("train", [])):
        assert composition_error(name, [*settings, f"hydra.run.dir={folder}"]).startswith(f"hydra.run.dir={folder} is an index folder")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]
    assert composition_error("index", ["ckpt=x.ckpt", "corpus=c.tsv", f"out={tmp_path / 'o'}", f"hydra.run.dir={tmp_path / 'run'}"]) is None


def test_review_fixes_for_settings_refused_without_need():
    """trainer=ddp's strategy takes its own buffer switch as a setting (it raised 'multiple values'); data.val_split=test
    from the Hub (no data.path: no test split is read) is not refused as the test split; index.py's split may be null
    (unused with corpus=), evaluate.py's may not."""
    from two_tower.cli.common import composition_error
    from two_tower.training.processes import ddp_strategy

    strategy = ddp_strategy(forward_sync_buffers=True)
    assert strategy._ddp_kwargs == {"forward_sync_buffers": True}
    assert ddp_strategy()._ddp_kwargs == {"forward_sync_buffers": False}
    assert composition_error("index", ["ckpt=x.ckpt", "corpus=c.tsv", "split=null"]) is None
    assert composition_error("evaluate", ["split=null"]) == "split=null: must be a split name"
