"""The ROS-free core: student checkpoints, encoder, place map, sequence matching, localizer, energy."""
