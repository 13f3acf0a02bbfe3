"""LightningModule: trains the towers on triplet batches and validates by ranking the whole split corpus."""

from __future__ import annotations

import hydra
import lightning as L
import numpy as np
import torch
import torchmetrics
from omegaconf import DictConfig, OmegaConf

from two_tower.core.distributed import gathered_for_checkpoint, own_part, world_size
from two_tower.core.errors import TrainingDivergedError
from two_tower.data.tokenizer import Tokenizer
from two_tower.data.embeddings import restore_tokenizer
from two_tower.model import frozen_rows
from two_tower.model.encoders import TwoTower
from two_tower.model.vocabulary import attach_vocabulary
from two_tower.core.metrics import RANKING_METRICS, dense_split_per_query


def _plain(value):
    """Plain dicts in the checkpoint, so it loads with torch.load(weights_only=True)."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


# The checkpoint entry holding the training epoch's running sums (train/loss_epoch and the other statistics).
EPOCH_SUMS_KEY = "train_epoch_sums"
RUN_CONFIG_KEY = "run_config"  # the composed configuration of the run that saved the checkpoint
DATA_DIGESTS_KEY = "data_digests"  # {split: PreparedSplit.content_digest} of the rows the run trained and validated on


class QueryMean(torchmetrics.Metric):
    """The mean of one per-query metric over every process's queries: a sum and a count, summed across
    processes (``dist_reduce_fx="sum"``) when Lightning computes it at the end of the epoch.

    With one process the value is exactly ``metrics.mean_metrics``'s: one Python left-to-right sum in
    float64, divided by the count, rounded to float32 as ``self.log`` stores a float.
    """

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, values) -> None:
        self.total += sum(values)
        self.count += len(values)

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


def _as_config(value) -> DictConfig | None:
    if value is None or isinstance(value, DictConfig):
        return value
    return OmegaConf.create(value)


class TwoTowerModule(L.LightningModule):
    """Hyper-parameters are the Hydra configs of the parts, so a checkpoint rebuilds its own model.

    ``gather_across_devices``: with several processes (DDP), every process's batch passages serve as
    in-batch negatives for every query, with gradients flowing back to the process that encoded them
    (like sentence-transformers' ``gather_across_devices``).

    The tokenizer travels inside the checkpoint (``checkpoint["tokenizer"]``), so search and serving
    need nothing but the ``.ckpt`` file.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        encoder: DictConfig | dict,
        loss: DictConfig | dict,
        optimizer: DictConfig | dict,
        scheduler: DictConfig | dict | None = None,
        shared_towers: bool = True,
        freeze_embeddings: bool = False,
        gather_across_devices: bool = False,
        extension_size: int = 0,
        hash_buckets: int = 0,
    ):
        super().__init__()
        encoder, loss, optimizer, scheduler = _plain(encoder), _plain(loss), _plain(optimizer), _plain(scheduler)
        self.save_hyperparameters()
        encoder_factory = hydra.utils.instantiate(_as_config(encoder), _partial_=True)
        self.towers = TwoTower(vocab_size, embedding_dim, encoder_factory, shared_towers, freeze_embeddings, extension_size, hash_buckets)
        self.loss_fn = hydra.utils.instantiate(_as_config(loss))
        self.tokenizer: Tokenizer | None = None
        # The run's composed configuration (train.py sets it): saved in checkpoints, so a resume that changes a
        # setting the run was trained with is refused (training.train.check_resume_settings).
        self.run_config: dict | None = None
        self._statistics: dict[int, object] = {}  # id(split) -> its passages' term statistics
        self._val_outputs: dict[int, list] = {0: [], 1: []}
        # The last full evaluation per stage ("val", "test"): (epoch, query rows, {metric: per-query values}),
        # read by the per-query writer callback.
        self.per_query: dict[str, tuple[int, object, dict]] = {}
        self._train_epoch_sums: dict[str, torch.Tensor] = {}
        self._train_epoch_rows = 0
        # val/* and test/* ranking metrics, summed over processes (states only: nothing in checkpoints).
        self.ranking_means = torch.nn.ModuleDict(
            {stage: torch.nn.ModuleDict({name.replace("@", "_at_"): QueryMean() for name in RANKING_METRICS}) for stage in ("val", "test")}
        )

    # ---------------------------------------------------------------- vocabulary and corpus
    def attach_tokenizer(self, tokenizer: Tokenizer) -> None:
        """The tokenizer and its open vocabulary (extension vectors, bag keys): call before encoding."""
        self.tokenizer = tokenizer
        attach_vocabulary([self.towers.query_encoder, self.towers.passage_encoder], tokenizer)

    def use_corpus(self, split) -> None:
        """Weigh bag-of-words terms by their IDF over ``split``'s passages (the corpus being ranked)."""
        if not self.towers.bags():
            return
        key = id(split)
        if key not in self._statistics:
            self._statistics[key] = self.towers.corpus_statistics(split.passage_tokens)
        self.towers.set_statistics(self._statistics[key])

    def on_fit_start(self):
        self.use_corpus(self.trainer.datamodule.train)

    def on_train_epoch_start(self):  # not called when a resumed run goes on with the checkpoint's epoch
        self.use_corpus(self.trainer.datamodule.train)
        self._train_epoch_sums, self._train_epoch_rows = {}, 0

    # ---------------------------------------------------------------- encoding
    def encode_queries(self, ids, lengths):
        return self.towers.encode_queries(ids, lengths)

    def encode_passages(self, ids, lengths):
        return self.towers.encode_passages(ids, lengths)

    # ---------------------------------------------------------------- training
    def batch_loss(self, batch: dict) -> dict:
        queries = self.encode_queries(batch["query_ids"], batch["query_lengths"])
        passages = self.encode_passages(batch["passage_ids"], batch["passage_lengths"])
        pids, positive_column, negative_columns = batch["passage_pids"], batch["positive_column"], batch["negative_columns"]
        teacher_passages = batch.get("teacher_passages")  # loss=distill: the teacher's vectors of the same passages
        if self.hparams.gather_across_devices and world_size() > 1:
            passages, pids, offset, teacher_passages = gather_passages(passages, pids, teacher_passages)
            positive_column, negative_columns = positive_column + offset, negative_columns + offset
        # A passage may be a negative for a row unless it is one of that row's selected passages,
        # padding (pid -1), or a copy of a passage met earlier in the (gathered) batch; a row's own
        # negatives point at that first copy.
        first = _first_columns(pids)
        negative_columns = first[negative_columns]
        selected = (batch["positive_pids"].unsqueeze(-1) == pids.view(1, 1, -1)).any(1)
        negative_mask = ~selected & (first == torch.arange(len(pids), device=pids.device)).unsqueeze(0) & (pids >= 0).unsqueeze(0)
        if teacher_passages is None:
            return self.loss_fn(queries, passages, positive_column, negative_mask, negative_columns)
        teacher_scores = batch["teacher_queries"] @ teacher_passages.T
        extra = {"labelled": batch["labelled"]} if "labelled" in batch else {}  # pseudo-queries: teacher only
        if extra and self.hparams.gather_across_devices and world_size() > 1:
            # The labelled rows' cross-entropy is a mean over the whole global batch's labelled rows: each process
            # divides its sum by the processes' mean count, so DDP's mean of the processes' gradients is the one-
            # process gradient (a per-process mean weighed a process's few labelled rows like another's many).
            import torch.distributed as dist

            count = batch["labelled"].sum().to(torch.float32)
            dist.all_reduce(count)
            extra["labelled_count"] = count / world_size()
        if getattr(self.loss_fn, "query_relation_weight", 0) > 0:
            # each query against the batch's other queries: every process's when gathering, as for passages
            others, teacher_others, offset, valid = queries, batch["teacher_queries"], 0, None
            if self.hparams.gather_across_devices and world_size() > 1:
                others, (teacher_others,), offset, valid = gather_rows(queries, batch["teacher_queries"])
            extra["teacher_query_scores"] = batch["teacher_queries"] @ teacher_others.T
            extra["relation_queries"] = (others, offset, valid)
        return self.loss_fn(queries, passages, positive_column, negative_mask, negative_columns, teacher_scores=teacher_scores, **extra)

    def training_step(self, batch, batch_idx):
        out = self.batch_loss(batch)
        if not torch.isfinite(out["loss"]):  # one host sync a step; Lightning's own logging of the loss has one too
            # NaN weights (a corrupted checkpoint resumed, a learning rate too high) trained on with loss nan, saved a
            # "best" checkpoint and ended with exit 0 (a helper's probe)
            raise TrainingDivergedError(
                f"the training loss is {float(out['loss'])} at step {self.global_step} (epoch {self.current_epoch}): the model diverged "
                "(e.g. a learning rate too high) or its weights or inputs hold NaN or inf; training stopped, and the checkpoints "
                "are those of the validations before this step")
        batch_size = batch["query_ids"].shape[0]
        self.log("train/loss_step", out["loss"], prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)
        # Epoch means (train/loss_epoch and the other statistics) are summed here, as Lightning would (float32
        # value * batch size, divided by the rows seen), and logged once in on_train_epoch_end: every self.log
        # call costs a few hundred microseconds of Python, and these sums go into checkpoints, so a run resumed
        # mid-epoch logs the whole epoch's mean (Lightning's own epoch accumulation is not saved).
        sums = self._train_epoch_sums
        for name, value in out.items():
            total = sums.get(name, torch.zeros((), dtype=torch.get_default_dtype(), device=value.device))
            sums[name] = total + value.detach().to(total.dtype) * batch_size
        self._train_epoch_rows += batch_size
        return out["loss"]

    def on_train_epoch_end(self):
        if self._train_epoch_rows:
            for name, mean in epoch_means(self._train_epoch_sums, self._train_epoch_rows).items():
                # batch_size=1: Lightning stores value * 1 and divides by 1, so the logged value is exact. The mean is
                # every process's already (epoch_means reduced it here, in every process): Lightning's sync_dist would
                # reduce it again when the value is first read, and its progress bar reads on rank 0 alone (a deadlock)
                key = "train/loss_epoch" if name == "loss" else f"train/{name}"
                self.log(key, mean, on_step=False, on_epoch=True, batch_size=1)
        self._train_epoch_sums, self._train_epoch_rows = {}, 0

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self):
        self._val_outputs = {0: [], 1: []}
        self.use_corpus(self.trainer.datamodule.val)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        encode = self.encode_passages if dataloader_idx == 0 else self.encode_queries
        # In float32 whatever trainer.precision says, as evaluate.py and index folders encode: under a mixed
        # precision the logged figure and the checkpoint chosen by it came from half-precision vectors
        # (a probe, bf16-mixed: 0.2278 logged against evaluate.py's 0.2296 for the same checkpoint).
        with torch.autocast(device_type=self.device.type, enabled=False):
            vectors = encode(batch["ids"], batch["lengths"]).float()
        self._val_outputs[dataloader_idx].append((batch["index"], vectors))

    def on_validation_epoch_end(self):
        passages = self._gather(0)
        queries = self._local_queries()
        self._val_outputs = {0: [], 1: []}
        if getattr(self.trainer.datamodule, "train", None) is not None:
            self.use_corpus(self.trainer.datamodule.train)  # training goes on with its own corpus
        if self.trainer.sanity_checking:
            return
        self._score(self.trainer.datamodule.val, passages, queries, "val")

    def _score(self, split, passages, queries, stage: str) -> None:
        """Rank this process's share of the queries against every passage (gathered from all processes),
        log ``{stage}/*`` (means over all processes' queries, through ``QueryMean``) and keep each query's
        values in ``self.per_query[stage]`` (every process's, in every process)."""
        if passages[0].numel() != split.num_passages:  # fast_dev_run / limit_val_batches: a partial corpus
            return
        rows = queries[0].cpu().numpy()
        rows, values = dense_split_per_query(queries[1].cpu(), self._ordered(passages, split.num_passages).cpu(), split, rows)
        if "rerank_mrr@10" not in values and bool((split.candidates.lengths[split.evaluated_queries()] > 0).any()):
            values["rerank_mrr@10"] = [0.0] * len(rows)  # this share's queries have no candidates (others' do)
        for name in RANKING_METRICS:
            if name in values:
                mean = self.ranking_means[stage][name.replace("@", "_at_")]
                mean.update(values[name])
                self.log(f"{stage}/{name}", mean, on_step=False, on_epoch=True, prog_bar=name == "mrr@10")
        if self.trainer.world_size > 1:
            rows, values = self._gather_per_query(rows, values)
        self.per_query[stage] = (self.current_epoch, rows, values)

    def _gather_per_query(self, rows: np.ndarray, values: dict[str, list[float]]):
        """Every process's (query rows, {metric: values}), concatenated in rank order."""
        names = list(values)
        table = torch.tensor([values[n] for n in names], dtype=torch.float64).T.reshape(len(rows), len(names))
        index, table = _all_gather_ragged(self, torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device), table.to(self.device))
        table = table.cpu()
        return index.cpu().numpy(), {n: table[:, i].tolist() for i, n in enumerate(names)}

    # ---------------------------------------------------------------- test: the best checkpoint, once
    def on_test_epoch_start(self):
        self._val_outputs = {0: [], 1: []}
        self.use_corpus(self.trainer.datamodule.test)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self):
        passages, queries = self._gather(0), self._local_queries()
        self._val_outputs = {0: [], 1: []}
        self._score(self.trainer.datamodule.test, passages, queries, "test")

    def _gather(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        index, emb = self._local(idx)
        if self.trainer.world_size > 1:
            index, emb = _all_gather_ragged(self, index, emb)
        # Rows encoded on several ranks (or twice) are identical: keep the first of each.
        keep = _first_occurrence(index)
        return index[keep], emb[keep]

    def _local(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What this process encoded (possibly nothing: it still takes part in the gathers)."""
        outs = self._val_outputs[idx]
        if not outs:
            return torch.empty(0, dtype=torch.long, device=self.device), torch.empty(0, self.towers.query_encoder.output_dim, device=self.device)
        return torch.cat([i for i, _ in outs]), torch.cat([e for _, e in outs])

    def _local_queries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's encoded queries (its share; the ranking is split by query), each query once
        over all processes: one encoded by a lower rank too is left to that rank. Only indices travel."""
        index, emb = self._local(1)
        keep = _first_occurrence(index)
        index, emb = index[keep], emb[keep]
        if self.trainer.world_size > 1:
            n = torch.tensor([len(index)], device=self.device)
            longest = max(int(self.all_gather(n).max()), 1)
            padded = torch.cat([index, index.new_full((longest - len(index),), -1)])
            earlier = self.all_gather(padded).view(-1, longest)[: self.global_rank].flatten().cpu()
            mine = ~torch.from_numpy(np.isin(index.cpu().numpy(), earlier.numpy()))
            index, emb = index[mine.to(index.device)], emb[mine.to(emb.device)]
        return index, emb

    @staticmethod
    def _ordered(gathered, n: int) -> torch.Tensor:
        index, emb = gathered
        out = torch.empty(n, emb.shape[1], dtype=emb.dtype, device=emb.device)
        out[index] = emb
        return out

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = hydra.utils.instantiate(_as_config(self.hparams.optimizer))(params)
        scheduler_cfg = _as_config(self.hparams.scheduler)
        if not scheduler_cfg:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = hydra.utils.instantiate(scheduler_cfg)(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- checkpoints carry the tokenizer
    def on_save_checkpoint(self, checkpoint):
        if self._train_epoch_rows:  # saved mid-epoch (at an epoch's end the sums are logged and emptied)
            own = {"rows": self._train_epoch_rows, "sums": {name: total.detach().cpu() for name, total in self._train_epoch_sums.items()}}
            # "processes": resuming mid-epoch needs as many (train.check_resume_checkpoint); "ranks": each process's
            # sums (the epoch's mean is over all of them), gathered as callbacks.RNGState gathers its states (core.distributed)
            checkpoint[EPOCH_SUMS_KEY] = {**gathered_for_checkpoint(own), "processes": world_size()}
        if self.run_config is not None:
            checkpoint[RUN_CONFIG_KEY] = self.run_config
        digests = getattr(getattr(self._trainer, "datamodule", None), "data_digests", None) if self._trainer is not None else None
        if digests:  # what the run trained and validated on (a resume on other data is refused: train.check_resume_checkpoint)
            checkpoint[DATA_DIGESTS_KEY] = dict(digests)
        if self.tokenizer is not None:
            checkpoint["tokenizer"] = self.tokenizer.state_dict()
            # Frozen rows the vectors source gives again are not saved (two_tower.model.frozen_rows).
            derived = frozen_rows.strip(checkpoint["state_dict"], self, self.tokenizer)
            if derived:
                checkpoint[frozen_rows.KEY] = derived

    def on_load_checkpoint(self, checkpoint):
        if EPOCH_SUMS_KEY in checkpoint:  # a run resumed mid-epoch goes on summing that epoch
            saved = own_part(checkpoint[EPOCH_SUMS_KEY])  # this process's own (rank 0's alone in one saved at Ctrl-C)
            self._train_epoch_sums = {name: total.to(self.device) for name, total in saved["sums"].items()}
            self._train_epoch_rows = saved["rows"]
        if "tokenizer" in checkpoint:
            self.attach_tokenizer(restore_tokenizer(checkpoint["tokenizer"]))
            if frozen_rows.KEY in checkpoint:  # before Lightning loads checkpoint["state_dict"]
                frozen_rows.restore(checkpoint["state_dict"], checkpoint[frozen_rows.KEY], self.tokenizer)


def epoch_means(sums: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """{name: sum / rows} over the epoch's rows in every process: with several processes the sums and row counts
    of all of them are added first (one all-reduce, float64), so the mean weighs each row once. Each process
    logged its own share's mean before, and Lightning kept rank 0's: half the epoch's rows with two processes."""
    names = sorted(sums)
    if world_size() == 1:
        return {name: sums[name] / rows for name in names}
    import torch.distributed as dist

    device = sums[names[0]].device if names else torch.device("cpu")
    packed = torch.tensor([float(rows)] + [float(sums[name]) for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    dtype = sums[names[0]].dtype if names else torch.get_default_dtype()
    return {name: (packed[i + 1] / packed[0]).to(dtype) for i, name in enumerate(names)}


def gather_rows(rows: torch.Tensor, *fixed: torch.Tensor):
    """Every process's ``rows`` (differentiable) and, row for row, its ``fixed`` tensors (not differentiable),
    each process's part padded to the longest with zeros. Returns (rows [world * longest, ...], the fixed
    tensors gathered, offset of this process's first row, [world * longest] bool: a real row, not padding)."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    size = torch.tensor([len(rows)], device=rows.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))

    def padded(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.new_zeros(longest - len(x), *x.shape[1:])])

    all_rows = torch.cat(dist_fn.all_gather(padded(rows)))
    gathered = []
    for x in fixed:
        parts = [torch.empty_like(padded(x)) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, padded(x))
        gathered.append(torch.cat(parts))
    valid = torch.cat([torch.arange(longest, device=rows.device) < s.item() for s in sizes])
    return all_rows, gathered, dist.get_rank() * longest, valid


def gather_passages(passages: torch.Tensor, pids: torch.Tensor, teacher_passages: torch.Tensor | None = None):
    """All processes' passage vectors (differentiable) and ids, padded to the longest with pid -1, and
    the teacher's vectors of the same passages if given (not differentiable).

    Returns (passages [world * longest, d], pids, offset of this process's first column, teacher passages or None).
    """
    all_passages, gathered, offset, valid = gather_rows(passages, pids, *([teacher_passages] if teacher_passages is not None else []))
    all_pids = torch.where(valid, gathered[0], -1)
    return all_passages, all_pids, offset, gathered[1] if teacher_passages is not None else None


def _first_columns(ids: torch.Tensor) -> torch.Tensor:
    """For each position i, the first position j <= i with ids[j] == ids[i]."""
    order = torch.argsort(ids, stable=True)
    sorted_ids = ids[order]
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[1:] = sorted_ids[1:] != sorted_ids[:-1]
    group = torch.cumsum(starts.long(), 0) - 1
    out = torch.empty_like(order)
    out[order] = order[starts][group]
    return out


def _first_occurrence(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value."""
    first = _first_columns(index)
    return torch.nonzero(first == torch.arange(len(index), device=index.device)).flatten()


def _all_gather_ragged(module: L.LightningModule, index: torch.Tensor, emb: torch.Tensor):
    """all_gather for per-rank tensors of different lengths: pad to the longest, gather, trim."""
    n = torch.tensor([len(index)], device=module.device)
    sizes = module.all_gather(n).view(-1)
    longest = int(sizes.max())
    pad = longest - len(index)
    index = torch.cat([index, index.new_full((pad,), -1)])
    emb = torch.cat([emb, emb.new_zeros(pad, emb.shape[1])])
    all_index = module.all_gather(index).view(-1)
    all_emb = module.all_gather(emb).reshape(-1, emb.shape[1])
    keep = all_index >= 0
    return all_index[keep], all_emb[keep]
