"""Jobs: plain functions that take ids and dates (RQ runs them), each recording
a ``job_runs`` row through ``runs.execute``."""
