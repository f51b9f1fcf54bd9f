"""How well one sentence encoder agrees with another on the same sentences: the quality
measure of a compressed or linearized pretrained encoder against the original."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _ranks(x):
    return torch.argsort(torch.argsort(x)).to(torch.float64)


def agreement(teacher_embeddings, student_embeddings, neighbours: int = 10) -> dict:
    """How well a student's sentence embeddings (N, width) agree with the teacher's: mean
    cosine of each pair, the mean overlap of each sentence's ``neighbours`` nearest
    neighbours (within the set, by cosine), and the Spearman correlation of all pairwise
    similarities."""
    a = F.normalize(teacher_embeddings.double(), dim=-1)
    b = F.normalize(student_embeddings.double(), dim=-1)
    n = a.shape[0]
    if n <= neighbours:
        raise ValueError(f"need more than {neighbours} sentences, got {n}")
    sim_a, sim_b = a @ a.t(), b @ b.t()
    eye = torch.eye(n, dtype=torch.bool)
    top_a = sim_a.masked_fill(eye, -2).topk(neighbours, dim=-1).indices
    top_b = sim_b.masked_fill(eye, -2).topk(neighbours, dim=-1).indices
    overlap = torch.tensor([len(set(x.tolist()) & set(y.tolist())) / neighbours
                            for x, y in zip(top_a, top_b)]).mean()
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    ra, rb = _ranks(sim_a[upper]), _ranks(sim_b[upper])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    spearman = (ra @ rb) / math.sqrt(float((ra @ ra) * (rb @ rb)))
    return {"mean_cosine": float((a * b).sum(-1).mean()), "top10_overlap": float(overlap),
            "spearman": float(spearman)}
