"""Interpretation of steering runs: figures (and, later, similarity, lens, attribution, reports).

Analyses consume run folders and interventions; they never train.
"""
