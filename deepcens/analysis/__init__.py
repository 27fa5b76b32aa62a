"""Analyses of data and runs: anchor statistics (``deepcens anchors``), and more to come."""
