"""Values that the runtime and vpr_node's parameter table share, in a module that imports nothing, so
that the table (and the launch file reading it) loads without torch, FAISS or OpenCV."""

# 2**25 = 33.5 megapixels: 8K UHD (7680x4320, 33.2 MP) fits; decoded as RGB that is at most 100 MB.
DEFAULT_MAX_IMAGE_PIXELS = 2**25

# What the localizer does with a frame: match it only, or also add it to the map as a new place.
MODES = ("localize", "map")
