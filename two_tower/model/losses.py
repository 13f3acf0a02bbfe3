"""Losses over a batch: queries [B, d], the batch's unique passages [C, d] (all L2-normalised).

``positive_column[i]`` is row i's positive; ``negative_mask[i, c]`` says passage c may serve as a
negative for row i (False for any passage selected for that query, so duplicates of the positive and
other selected passages never count); ``negative_columns[i]`` are row i's own explicit negatives (may be
empty). Passages are unique per batch, so a duplicate is never counted twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from two_tower.core.checks import check


def softmax_columns(negative_mask: torch.Tensor, positive_column: torch.Tensor) -> torch.Tensor:
    """[B, C] bool: the passages each query's softmax ranks, its positive and its valid negatives."""
    keep = negative_mask.clone()
    keep[torch.arange(len(keep), device=keep.device), positive_column] = True
    return keep


def masked_kl(teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[B] KL(teacher || student) of each row's two softmaxes over its ``keep`` columns (the others are -inf in
    both: zeroed before subtracting, so no NaN reaches any gradient)."""
    log_ratio = (teacher_log_probs - student_log_probs.masked_fill(~keep, 0.0)).masked_fill(~keep, 0.0)
    return (teacher_log_probs.exp() * log_ratio).sum(1)


class TripletLoss(nn.Module):
    """max(0, d(q, p) - d(q, n) + margin) with cosine distance d = 1 - cos.

    With explicit negatives (negatives=random, bm25, ...) n is each of the row's own negatives.
    With none (negatives=in_batch), n is the other rows' passages: ``in_batch=hardest`` takes the
    closest valid one per row (the hardest negative), ``in_batch=all`` averages over every valid one.
    """

    def __init__(self, margin: float = 0.2, in_batch: str = "hardest"):
        super().__init__()
        check("loss.margin", margin)
        check("loss.in_batch", in_batch)
        self.margin, self.in_batch = margin, in_batch

    def forward(self, queries, passages, positive_column, negative_mask, negative_columns):
        sim = queries @ passages.T  # cosine similarity [B, C]
        rows = torch.arange(len(queries), device=sim.device)
        pos_dist = 1 - sim[rows, positive_column]
        if negative_columns.shape[1]:
            valid = negative_mask.gather(1, negative_columns)  # [B, k]
            neg_dist = 1 - sim.gather(1, negative_columns)
        elif self.in_batch == "hardest":
            masked = sim.masked_fill(~negative_mask, float("-inf"))
            best, best_col = masked.max(1)
            valid = torch.isfinite(best).unsqueeze(1)
            neg_dist = 1 - sim.gather(1, best_col.unsqueeze(1))
        else:
            valid = negative_mask
            neg_dist = 1 - sim
        losses = F.relu(pos_dist.unsqueeze(1) - neg_dist + self.margin)
        n = valid.sum().clamp(min=1)
        loss = (losses * valid).sum() / n
        return {
            "loss": loss,
            "pos_distance": pos_dist.mean().detach(),
            "neg_distance": ((neg_dist * valid).sum() / n).detach(),
            "active_fraction": (((losses > 0) & valid).sum() / n).detach(),
        }


class InfoNCELoss(nn.Module):
    """Softmax cross-entropy of each query over its positive and every valid passage in the batch
    (the other rows' passages plus all rows' explicit negatives), scaled by 1 / temperature.
    With negatives=in_batch this is sentence-transformers' MultipleNegativesRankingLoss."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        check("loss.temperature", temperature)
        self.temperature = temperature

    def forward(self, queries, passages, positive_column, negative_mask, negative_columns):
        sim = queries @ passages.T
        keep = softmax_columns(negative_mask, positive_column)
        logits = (sim / self.temperature).masked_fill(~keep, float("-inf"))
        loss = F.cross_entropy(logits, positive_column)
        accuracy = (logits.argmax(1) == positive_column).float().mean()
        return {"loss": loss, "in_batch_accuracy": accuracy.detach(), "negatives_per_query": negative_mask.sum(1).float().mean()}


class DistillLoss(nn.Module):
    """Match a teacher's scores over the batch, plus (``label_weight``) InfoNCE on the labels.

    For each query, the teacher's cosine scores over the same passages the student ranks (its positive
    and every valid in-batch or explicit negative) become a softmax at ``teacher_temperature``; the
    student's scores at ``temperature`` are pulled towards it with KL(teacher || student), as in
    RocketQA / tevatron listwise distillation. ``label_weight`` mixes in the plain InfoNCE loss:
    loss = label_weight * InfoNCE + (1 - label_weight) * KL. The teacher's scores come with the batch
    (``teacher_scores`` [B, C], precomputed by ``two_tower.data.teacher``); the loss never runs the teacher.
    ``labelled`` [B] bool (optional): rows without a label (pseudo-queries) add only their teacher term;
    the InfoNCE term averages over the labelled rows.

    ``margin_weight`` swaps part or all of the KL for MarginMSE (Hofstaetter et al. 2020, sentence-
    transformers' ``MarginMSELoss``): the squared difference between the student's margin
    s(q, pivot) - s(q, c) and the teacher's over the same pair, for every other column c the softmax
    ranks; the teacher term is (1 - margin_weight) * KL + margin_weight * MarginMSE. The pivot is the
    labelled positive; a row without a label (a pseudo-query, whose source passage is a positive by
    construction, not by judgement) pivots on the teacher's top column. Matching every margin to one
    pivot matches every pairwise margin, so the pivot only weighs the pairs. Scale: each side's margins
    are in its own softmax's logit units (divided by ``temperature`` and ``teacher_temperature``), the
    units whose differences the KL matches, so both terms agree on what a perfect student is; the MSE
    averages over the (row, column) pairs. ``learn_margin_scale`` multiplies the teacher's margins by a
    learned positive factor (exp of a parameter starting at 0, trained with the towers), so the student
    matches the teacher's margins up to one scale. ``margin_pairs="mined"`` keeps only the pairs of each
    row's own explicit (mined) negatives, as Hofstaetter et al. train on (query, positive, BM25 negative)
    triples; ``"all"`` takes every column the softmax ranks.

    ``query_relation_weight`` adds a relational term (Park et al. 2019's relational knowledge distillation,
    listwise): each query's softmax over the *other queries* of the batch (student cosines at ``temperature``)
    is pulled towards the teacher's (``teacher_query_scores`` [B, B], at ``teacher_temperature``) with the same
    KL; loss += query_relation_weight * that KL. It teaches the query tower which queries the teacher finds
    alike (pseudo-queries included), not only how each ranks its passages.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        teacher_temperature: float = 0.05,
        label_weight: float = 0.5,
        margin_weight: float = 0.0,
        learn_margin_scale: bool = False,
        margin_pairs: str = "all",
        query_relation_weight: float = 0.0,
    ):
        super().__init__()
        check("loss.temperature", temperature)
        check("loss.teacher_temperature", teacher_temperature)
        check("loss.label_weight", label_weight)
        check("loss.margin_weight", margin_weight)
        check("loss.learn_margin_scale", learn_margin_scale)
        check("loss.margin_pairs", margin_pairs)
        check("loss.query_relation_weight", query_relation_weight)
        self.query_relation_weight = float(query_relation_weight)
        self.temperature, self.teacher_temperature, self.label_weight = temperature, teacher_temperature, label_weight
        self.margin_weight, self.margin_pairs = margin_weight, margin_pairs
        # log of the factor on the teacher's margins (a parameter only when learned: checkpoints of the
        # other recipes keep their state dicts)
        self.log_margin_scale = nn.Parameter(torch.zeros(())) if learn_margin_scale else None

    def forward(self, queries, passages, positive_column, negative_mask, negative_columns, teacher_scores=None, labelled=None, teacher_query_scores=None, relation_queries=None, labelled_count=None):
        if teacher_scores is None:
            raise ValueError("loss=distill needs the teacher's scores with each batch (the teacher config group)")
        if self.query_relation_weight > 0 and teacher_query_scores is None:
            raise ValueError("loss.query_relation_weight > 0 needs the teacher's query-query scores with each batch")
        sim = (queries @ passages.T).float()  # softmaxes in float32, also under mixed precision
        rows = torch.arange(len(queries), device=sim.device)
        keep = softmax_columns(negative_mask, positive_column)
        student_scaled, teacher_scaled = sim / self.temperature, teacher_scores.float() / self.teacher_temperature
        student_log_probs = F.log_softmax(student_scaled.masked_fill(~keep, float("-inf")), dim=1)
        teacher_logits = teacher_scaled.masked_fill(~keep, float("-inf"))
        teacher_log_probs = F.log_softmax(teacher_logits, dim=1)
        kl = masked_kl(teacher_log_probs, student_log_probs, keep).mean()
        if labelled is None:
            cross_entropy = -student_log_probs[rows, positive_column].mean()
        else:
            weights = labelled.to(sim.dtype)
            # labelled_count: the processes' mean count of labelled rows when training gathers across them (module.batch_loss)
            count = weights.sum().clamp(min=1) if labelled_count is None else labelled_count.clamp(min=1e-12)
            cross_entropy = -(student_log_probs[rows, positive_column] * weights).sum() / count
        teacher_term, margin_stats = kl, {}
        if self.margin_weight > 0:  # MarginMSE only where it is part of the loss (KL-only runs skip it)
            if self.log_margin_scale is not None:
                teacher_scaled = teacher_scaled * self.log_margin_scale.exp()
                margin_stats["margin_scale"] = self.log_margin_scale.exp().detach()
            columns = keep
            if self.margin_pairs == "mined":  # each row's own negatives only (none: the row adds no pair)
                columns = torch.zeros_like(keep).scatter_(1, negative_columns, True) & keep
            margin_mse = self._margin_mse(student_scaled, teacher_scaled, keep, columns, positive_column, labelled)
            teacher_term = (1 - self.margin_weight) * kl + self.margin_weight * margin_mse
            margin_stats["margin_mse"] = margin_mse.detach()
        loss = self.label_weight * cross_entropy + (1 - self.label_weight) * teacher_term
        if self.query_relation_weight > 0:
            relation = self._query_relations(queries, teacher_query_scores, *(relation_queries or ()))
            loss = loss + self.query_relation_weight * relation
            margin_stats["query_relation_kl"] = relation.detach()
        return {
            "loss": loss,
            "kl": kl.detach(),
            **margin_stats,
            "cross_entropy": cross_entropy.detach(),
            "in_batch_accuracy": (student_log_probs.argmax(1) == positive_column).float().mean().detach(),
            # How often the student's top passage is the teacher's: agreement beyond the labels.
            "teacher_agreement": (student_log_probs.argmax(1) == teacher_logits.argmax(1)).float().mean().detach(),
            "teacher_accuracy": (teacher_logits.argmax(1) == positive_column).float().mean().detach(),
        }

    def _query_relations(self, queries, teacher_query_scores, others=None, offset=0, valid=None):
        """Mean over rows of KL(teacher || student) between softmaxes over the *other* queries: ``others`` (every
        process's queries when training gathers them; ``queries`` by default), row i being column ``offset + i``,
        ``valid`` marking real columns (not padding); ``teacher_query_scores`` [B, len(others)]."""
        others = queries if others is None else others
        if (len(others) if valid is None else int(valid.sum())) < 2:  # one query: nothing to relate it to
            return queries.new_zeros((), dtype=torch.float32)
        rows = torch.arange(len(queries), device=queries.device)
        keep = torch.ones(len(queries), len(others), dtype=torch.bool, device=queries.device)
        keep[rows, offset + rows] = False
        if valid is not None:
            keep &= valid.unsqueeze(0)
        student = F.log_softmax(((queries @ others.T).float() / self.temperature).masked_fill(~keep, float("-inf")), dim=1)
        teacher = F.log_softmax((teacher_query_scores.float() / self.teacher_temperature).masked_fill(~keep, float("-inf")), dim=1)
        return masked_kl(teacher, student, keep).mean()

    @staticmethod
    def _margin_mse(student_logits, teacher_logits, keep, columns, positive_column, labelled):
        """Mean over (row, column in ``columns`` other than the pivot) of ((s_pivot - s_c) - (t_pivot - t_c))^2."""
        rows = torch.arange(len(keep), device=keep.device)
        pivot = positive_column
        if labelled is not None:  # unlabelled rows: the teacher's top column among those the softmax ranks
            pivot = torch.where(labelled, positive_column, teacher_logits.masked_fill(~keep, float("-inf")).argmax(1))
        pairs = columns.clone()
        pairs[rows, pivot] = False
        student_margin = student_logits[rows, pivot].unsqueeze(1) - student_logits
        teacher_margin = teacher_logits[rows, pivot].unsqueeze(1) - teacher_logits
        squared = (student_margin - teacher_margin).square().masked_fill(~pairs, 0.0)
        return squared.sum() / pairs.sum().clamp(min=1)
