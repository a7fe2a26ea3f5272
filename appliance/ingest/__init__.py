"""Fetching and writing bars, and what comes with them (corporate actions, identity)."""
