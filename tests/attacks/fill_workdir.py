# Fill the workdir: as many bytes, then as many files, as it will take.
import os
import sys

written = 0
try:
    with open("big", "wb") as fh:
        while written < 1 << 30:
            fh.write(b"\0" * (1 << 20))
            fh.flush()
            written += 1 << 20
except OSError as exc:
    print("bytes stopped:", exc, file=sys.stderr)
os.remove("big")
files = 0
try:
    while files < 1_000_000:
        open(f"f{files}", "w").close()
        files += 1
except OSError as exc:
    print("files stopped:", exc, file=sys.stderr)
print(written >> 20, files)
