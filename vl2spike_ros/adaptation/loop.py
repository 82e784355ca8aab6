"""The adaptation run: from a base student and a reference traverse to the weights to write.

Steps of `pairs` anchor/positive pairs, each frame under its own draw of changed conditions; Adam on
the adaptable weights only. Every `check_every` steps (and at the end) the self-check scores the
weights and the best ones are kept; they replace the base only if they beat it on the self-check
and keep the energy per frame within ENERGY_MARGIN of the base's. Otherwise the base weights come
back unchanged (same fingerprint), and the provenance says why.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from vl2spike_ros.adaptation.augmentation import change_conditions
from vl2spike_ros.adaptation.objective import FiringGuard, adaptable_parameters, contrastive, distillation
from vl2spike_ros.adaptation.self_check import SelfCheck, describe
from vl2spike_ros.adaptation.traverse import Traverse
from vl2spike_ros.core.energy import EnergyReport, estimate_energy
from vl2spike_ros.model import SpikformerStudent

ENERGY_FRAMES = 32
ENERGY_MARGIN = 0.02  # adapted energy per frame may exceed the base's by at most 2%


@dataclass
class AdaptationSettings:
    steps: int | None = 120          # None: until `minutes` have passed
    minutes: float | None = None
    pairs: int = 32
    # Small steps and a strong pull to the base: the self-check cannot see a condition the traverse
    # does not show (winter, on a summer traverse), and larger steps gained on the self-check while
    # losing Recall@1 on Nordland's winter queries (docs/adaptation.md#measured).
    learning_rate: float = 3e-5
    distillation_weight: float = 5.0
    firing_weight: float = 1.0
    last_block: bool = True          # adapt the last block too, not only the descriptor head
    check_every: int = 40
    seed: int = 0


@dataclass
class AdaptationResult:
    model: SpikformerStudent
    kept: str                          # "adapted" or "base"
    reason: str
    steps: int
    final_loss: float
    seconds: float
    energy_before: EnergyReport
    energy_after: EnergyReport
    self_check: dict = field(default_factory=dict)


def _energy(model: SpikformerStudent, traverse: Traverse) -> EnergyReport:
    sample = np.linspace(0, len(traverse) - 1, min(ENERGY_FRAMES, len(traverse))).round().astype(int)
    return estimate_energy(model, traverse.batch(sample))


def adapt(base: SpikformerStudent, traverse: Traverse, settings: AdaptationSettings,
          progress: bool = True) -> AdaptationResult:
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    base = base.eval()
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    targets = describe(base, traverse.images)  # the base on every clean frame
    check = SelfCheck(traverse, seed=settings.seed + 1)
    base_recall = check.recall_at_1(base)
    energy_before = _energy(base, traverse)

    model = copy.deepcopy(base).eval()  # eval: BatchNorm keeps the base's statistics
    optimizer = torch.optim.Adam(adaptable_parameters(model, settings.last_block), lr=settings.learning_rate)
    guard = FiringGuard(model)
    model(traverse.batch(traverse.training[:: max(1, len(traverse.training) // 256)]))
    guard.base = guard.take().detach()

    best_state, best_recall, best_step = None, base_recall, 0
    checks = [{"step": 0, "recall@1": base_recall}]
    deadline = None if settings.minutes is None else time.perf_counter() + 60.0 * settings.minutes
    bar = tqdm(total=settings.steps, unit="step", desc="adapting", disable=not progress)
    step, loss_value = 0, float("nan")
    while (settings.steps is None or step < settings.steps) and (deadline is None or time.perf_counter() < deadline):
        anchors, positives = traverse.sample_pairs(settings.pairs, generator)
        views = change_conditions(traverse.batch(np.concatenate([anchors, positives])), generator)
        descriptors = model(views).descriptor
        first, second = descriptors[: len(anchors)], descriptors[len(anchors):]
        related = torch.from_numpy(traverse.related(anchors, positives))
        loss = (contrastive(first, second, related)
                + settings.distillation_weight * distillation(descriptors, targets[np.concatenate([anchors, positives])])
                + settings.firing_weight * guard.penalty(guard.take()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_value = loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}")
        if step % settings.check_every == 0:
            best_state, best_recall, best_step = _checked(model, check, checks, step, best_state, best_recall, best_step)
    if step % settings.check_every:
        best_state, best_recall, best_step = _checked(model, check, checks, step, best_state, best_recall, best_step)
    bar.close()
    guard.remove()

    kept, reason, result_model = "base", f"self-check Recall@1 not above the base's {base_recall:.2f}%", base
    energy_after = energy_before
    if best_state is not None:
        model.load_state_dict(best_state)
        energy_after = _energy(model, traverse)
        if energy_after.snn_energy_pj > energy_before.snn_energy_pj * (1.0 + ENERGY_MARGIN):
            reason = (f"energy per frame {energy_after.snn_energy_pj * 1e-6:.2f} µJ, more than "
                      f"{ENERGY_MARGIN:.0%} above the base's {energy_before.snn_energy_pj * 1e-6:.2f} µJ")
            energy_after = energy_before
        else:
            kept, reason, result_model = "adapted", f"self-check Recall@1 {base_recall:.2f}% -> {best_recall:.2f}% at step {best_step}", model
    for parameter in result_model.parameters():
        parameter.requires_grad_(False)
    return AdaptationResult(
        model=result_model.eval(), kept=kept, reason=reason, steps=step, final_loss=loss_value,
        seconds=time.perf_counter() - started, energy_before=energy_before, energy_after=energy_after,
        self_check={"queries": check.queries, "held_out_frames": int(len(traverse.held_out)),
                    "base_recall@1": base_recall, "adapted_recall@1": best_recall if kept == "adapted" else None,
                    "best_step": best_step if kept == "adapted" else None, "checks": checks})


def _checked(model, check, checks, step, best_state, best_recall, best_step):
    recall = check.recall_at_1(model)
    checks.append({"step": step, "recall@1": recall})
    if recall > best_recall:
        return copy.deepcopy(model.state_dict()), recall, step
    return best_state, best_recall, best_step
