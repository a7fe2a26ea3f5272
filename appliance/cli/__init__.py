"""The ``appliance`` command: its commands, the runtime they share and the supervisor of ``appliance up``."""
