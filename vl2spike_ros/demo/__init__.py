"""The demo: the embedded route, the offline run and the live run through vpr_node."""
