"""Offline training for vl2spike_ros: teachers, distillation losses, trainer, ablations, export."""
