"""Pure domain logic: no I/O, no provider, store or web module."""
