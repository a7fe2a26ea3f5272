"""The running process: its Runtime (pools, Redis), the embedded services, the
replica, logs, config sync, private files."""
