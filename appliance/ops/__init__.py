"""Operations: backups, maintenance, performance, spot checks, history, retention,
the status view, export."""
