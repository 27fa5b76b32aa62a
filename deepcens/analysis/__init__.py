"""Analyses run on datasets and trained models (anchor statistics, decoder grid search)."""
