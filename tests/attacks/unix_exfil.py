# Send a patient record to host services through unix sockets: a pathname
# stream socket, a pathname datagram socket and an abstract one.
# argv[1]: the directory holding stream.sock and dgram.sock; argv[2]: the abstract name.
import socket
import sys

RECORD = b"MRN 00417 Jane Doe, HIV+, metformin 500mg"
sent = []
for kind, address in ((socket.SOCK_STREAM, f"{sys.argv[1]}/stream.sock"), (socket.SOCK_DGRAM, f"{sys.argv[1]}/dgram.sock"),
                      (socket.SOCK_STREAM, "\0" + sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.connect(address)
            s.sendall(RECORD)
        else:
            s.sendto(RECORD, address)
        sent.append(address)
    except OSError as exc:
        print(address, exc, file=sys.stderr)
print("SENT", sent)
sys.exit(0 if sent else 1)
