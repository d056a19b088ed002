# Fileless execution: copy a binary into an anonymous memory file and run it.
import os

fd = os.memfd_create("payload")
os.write(fd, open("/bin/true", "rb").read())
os.execv(f"/proc/self/fd/{fd}", ["payload"])
