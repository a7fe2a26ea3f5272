"""Fetching bars from the providers and writing them: backfills, one symbol's daily
bars, their chunks, minutes, demo data."""
