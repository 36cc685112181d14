"""Reading the store for people: exact time windows, the reader over the index, burn rates
and terminal rendering. Takes the index; gives rows, tables and JSON/CSV."""
