"""Fetching and writing bars: plans, whole-market files, fan-out."""
