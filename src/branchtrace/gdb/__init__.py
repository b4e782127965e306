"""branchtrace inside GDB: the command file ``branchtrace gdb-init`` writes (commands.py,
sourced by GDB's own Python, imports nothing of branchtrace)."""
