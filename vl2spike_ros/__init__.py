"""vl2spike_ros: visual place recognition with a distilled spiking transformer."""

__version__ = "0.1.0"

# Python started in a clone (`python -m pytest` there) imports this package from the clone, also while
# a colcon install of it is sourced; the messages that colcon generated (vl2spike_ros.msg, .srv) are in
# the installed copy, which this puts on the package's path after the clone's.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
