"""Evaluation helpers: manifests of recordings, text normalisation, scores."""
