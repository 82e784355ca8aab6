"""`vl2spike adapt`: fits a student to one reference traverse, self-supervised, on the CPU.

`traverse` reads the frames and splits off held-out stretches, `augmentation` models the change
between the map's conditions and a later visit's, `objective` is what the loop minimises,
`self_check` decides on the held-out frames whether the adapted weights are kept, and `adapt`
runs it all and returns the weights with their provenance.
"""
