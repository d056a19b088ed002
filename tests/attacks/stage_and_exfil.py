# Stage data by walking files the policy lets it read, then send it to the
# one API the policy allows: nothing here breaks a rule; only the guard's
# profile tells it apart from the tool's normal work.
import os
import sys
import urllib.request

staged = []
for root, _dirs, files in os.walk("/usr/lib/python3.11"):
    for name in files[:20]:
        try:
            with open(os.path.join(root, name), "rb") as fh:
                staged.append(fh.read(64))
        except OSError:
            pass
    if len(staged) > 400:
        break
port = sys.argv[2] if len(sys.argv) > 2 else sys.argv[1]
try:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/?d={len(staged)}", timeout=3).read()
    print("SENT")
except OSError as exc:
    print(f"blocked: {exc}")
