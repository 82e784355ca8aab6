"""`vl2spike benchmark`: speed, energy, map search, node latency and evaluation memory, each against
a reference measured in the same run on the same machine (see docs/benchmark.md)."""
