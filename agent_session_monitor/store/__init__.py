"""The session store on disk: one JSON document per session, atomic writes, file names,
the derived SQLite index, retention. Takes rounds; gives files and the index readers query."""
