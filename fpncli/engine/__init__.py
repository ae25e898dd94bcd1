"""Plain-Python engines behind the commands: each returns data and takes a progress callback."""
