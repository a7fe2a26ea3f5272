"""The configuration: loading, the JSON schema, the checks a schema cannot express, diffs, redaction."""
