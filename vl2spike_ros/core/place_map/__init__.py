"""A map of places: L2-normalised descriptors in a FAISS inner-product index, plus per-place metadata.

  place          `Place`, the metadata of one place
  index_factory  index kinds and options; building and training FAISS indexes
  index_file     checks a serialised index against map.json before FAISS reads it
  store          the map directory: crash-safe atomic save, consistent and verified read
  map            `PlaceMap`, which ties them together
"""
from vl2spike_ros.core.place_map.index_factory import INDEX_KINDS, minimum_training_count
from vl2spike_ros.core.place_map.map import PlaceMap
from vl2spike_ros.core.place_map.place import Place

__all__ = ["INDEX_KINDS", "Place", "PlaceMap", "minimum_training_count"]
