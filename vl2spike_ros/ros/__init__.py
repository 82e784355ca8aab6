"""The ROS 2 side: the vpr_node shell, image message conversion and bag tools."""
