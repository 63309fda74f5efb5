"""Planted-behaviour models for ground truth: the arithmetic backdoor task, planting, detection scores."""
