"""The configuration: loading, the JSON schema, the rules a schema cannot express,
diffs, redaction."""
