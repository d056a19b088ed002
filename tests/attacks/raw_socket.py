# Craft packets below TCP/IP: raw and packet sockets.
import socket
import sys

ok = 0
for family, kind, proto in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), (17, socket.SOCK_RAW, 0)):
    try:
        socket.socket(family, kind, proto)
        ok += 1
    except OSError as exc:
        print(family, exc, file=sys.stderr)
sys.exit(0 if ok else 1)
