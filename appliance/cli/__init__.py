"""The ``appliance`` command: its commands, the Runtime they share and the supervisor
of ``appliance up``."""
