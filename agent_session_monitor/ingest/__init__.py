"""Reading the access log into the store: files and rotations, gzip, container logs, stdin,
parsing, rounds, the monitor loop and its state. Takes log bytes; gives stored, priced rounds."""
