"""Alerts: the health snapshot they measure, the rules over it, and their notifiers."""
