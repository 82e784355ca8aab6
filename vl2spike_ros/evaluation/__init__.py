"""Offline evaluation: ground truth, Recall@K, PR curves, and the map-building/evaluation runner."""
