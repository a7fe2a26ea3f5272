"""Operations: backups, maintenance, performance, spot checks, history, the status view, export."""
