# Exfiltrate a record over TCP to a port the policy does not allow.
import socket
import sys

s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.sendall(b"patient=Jane Doe; mrn=12345678")
