"""Analyses of data and runs: anchor statistics (``deepcens anchors``), decoder grid search (``deepcens grid-search``)."""
