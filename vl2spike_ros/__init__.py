"""vl2spike_ros: visual place recognition with a distilled spiking transformer."""

__version__ = "0.1.0"
