"""Task and distillation losses (design §6). Each returns a scalar that is zero where the student
already agrees with its target, so a switched-off or satisfied term adds nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cross_season_info_nce(query: torch.Tensor, reference: torch.Tensor, place_ids: torch.Tensor,
                          temperature: float, near_places: int = 1) -> torch.Tensor:
    """Symmetric InfoNCE: query i's positive is reference i (the same place in the other season).

    query, reference: [B, D] unit rows; place_ids: [B] route positions. References within
    `near_places` of the anchor's place (but not the place itself) are near-positives: they look
    almost the same, so they are neither pushed away nor pulled in (masked out of the softmax).
    """
    logits = query @ reference.T / temperature
    distance = (place_ids[:, None] - place_ids[None, :]).abs()
    near = (distance > 0) & (distance <= near_places)
    logits = logits.masked_fill(near, float("-inf"))
    targets = torch.arange(len(query), device=query.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


class ManifoldAlignment(nn.Module):
    """SVS alignment: a learned projector into the teacher space; cosine 1 - <P z, g> plus the
    relation term ||Z Z^T - G G^T||^2 / B^2 between the student's and the teacher's batch geometry."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(student_dim, student_dim), nn.GELU(),
                                       nn.Linear(student_dim, teacher_dim))

    def project(self, student: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(student), dim=-1)


def alignment_cosine(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - <P z, g> averaged over the batch; both unit rows."""
    return (1.0 - (projected * teacher).sum(dim=-1)).mean()


def relation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||Z Z^T - G G^T||^2 / B^2 on unit rows: the student's similarities should be the teacher's."""
    batch = student.shape[0]
    return (student @ student.T - teacher @ teacher.T).pow(2).sum() / batch ** 2


def temporal_warmup_weight(epoch_progress: float, warmup_epochs: float) -> float:
    """w(e) = min(1, e / E_w): the temporal term waits until the student has something to keep
    consistent; before that it would only pull every step towards an untrained mean."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, epoch_progress / warmup_epochs)


def step_consistency_kl(step_logits: torch.Tensor) -> torch.Tensor:
    """step_logits [T, B, K]: mean over steps of KL(sg(mean_t p_t) || p_t)."""
    log_probs = F.log_softmax(step_logits, dim=-1)
    target = log_probs.exp().mean(dim=0).detach()
    return (target * (target.clamp_min(1e-12).log() - log_probs)).sum(dim=-1).mean()


def membrane_consistency(membrane_potentials: list[torch.Tensor]) -> torch.Tensor:
    """Each entry [T, ...]: mean squared distance of V_t to sg(mean_t V), averaged over layers."""
    terms = [(v - v.mean(dim=0, keepdim=True).detach()).pow(2).mean() for v in membrane_potentials]
    return torch.stack(terms).mean()


def rate_consistency(token_rates: torch.Tensor) -> torch.Tensor:
    """token_rates [T, B, C]: mean squared distance of r_t to sg(mean_t r)."""
    return (token_rates - token_rates.mean(dim=0, keepdim=True).detach()).pow(2).mean()


class PrototypeBank(nn.Module):
    """SPL prototypes: per class, an EMA of the (projected) student embeddings of its images.

    The loss sees m * sg(old) + (1 - m) * batch mean, so the current batch carries the gradient
    while the EMA keeps prototypes stable across batches.
    """

    def __init__(self, num_classes: int, dim: int, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("initialised", torch.zeros(num_classes, dtype=torch.bool))

    def current(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (classes present [K'], their prototypes [K', D] with gradient); updates the EMA."""
        classes = labels.unique()
        means = torch.stack([embeddings[labels == label].mean(dim=0) for label in classes])
        old = self.prototypes[classes]
        # A class seen for the first time starts from its batch mean, not from the zero vector.
        keep = self.initialised[classes].to(old.dtype)[:, None] * self.momentum
        mixed = F.normalize(keep * old + (1.0 - keep) * means, dim=-1)
        with torch.no_grad():
            self.prototypes[classes] = mixed.detach()
            self.initialised[classes] = True
        return classes, mixed


def prototype_text_info_nce(prototypes: torch.Tensor, classes: torch.Tensor, text: torch.Tensor,
                            temperature: float = 0.07) -> torch.Tensor:
    """Each present class's prototype against all class text embeddings; its own text is positive."""
    logits = prototypes @ text.T / temperature
    return F.cross_entropy(logits, classes)


def text_logit_kd(student_projected: torch.Tensor, teacher_image: torch.Tensor, text: torch.Tensor,
                  temperature: float, student_temperature: float) -> torch.Tensor:
    """tau^2 * KL(softmax(g T^T * 100 / tau) || softmax(z T^T / tau_s / tau))."""
    teacher_log_probs = F.log_softmax(teacher_image @ text.T * 100.0 / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_projected @ text.T / student_temperature / temperature, dim=-1)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1).mean()
    return temperature ** 2 * kl
