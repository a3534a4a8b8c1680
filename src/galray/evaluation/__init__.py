"""Evaluation of models against known truth."""
