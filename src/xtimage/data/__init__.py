"""Data sets: built-in synthetic tasks and users' own folders."""
