"""What both backends stand on: the Linux system interface, below any one backend.

* :mod:`.sys` - a ctypes binding to ptrace(2), waitpid flags and the other system calls;
* :mod:`.permissions` - why the system forbids tracing a process, in words;
* :mod:`.program` - finding the program to run, and the address to start recording at.

The backends import from here and never from each other: ``backends/ptrace`` and
``backends/stalker`` share this floor instead of borrowing each other's parts. Nothing
here imports numpy or a backend's optional dependency.
"""
