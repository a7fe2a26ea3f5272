"""Fetching bars from the providers and writing them: backfills, their chunks, minutes, demo data."""
