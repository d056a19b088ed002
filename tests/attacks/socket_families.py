# Reach past the IP egress hooks with other socket families: vsock toward the
# hypervisor, packet, bluetooth, the kernel crypto API, netlink audit, and a
# family number with high bits set that the kernel reads as AF_VSOCK; and past
# the API checks, which see TCP sockets only, with IP protocols other than TCP
# and UDP: multipath TCP (IPv4 and IPv6) and SCTP.
import ctypes
import socket
import sys

opened = []
for family, kind, proto in ((40, socket.SOCK_STREAM, 0), (17, socket.SOCK_RAW, 0), (31, socket.SOCK_STREAM, 0),
                            (38, socket.SOCK_SEQPACKET, 0), (16, socket.SOCK_RAW, 9),
                            (socket.AF_INET, socket.SOCK_STREAM, 262), (socket.AF_INET6, socket.SOCK_STREAM, 262),
                            (socket.AF_INET, socket.SOCK_STREAM, 132)):
    try:
        s = socket.socket(family, kind, proto)
        opened.append(family)
        if family == 40:
            s.connect((2, 9999))  # VMADDR_CID_HOST
    except OSError as exc:
        print(family, exc, file=sys.stderr)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fd = libc.syscall(41, ctypes.c_long((1 << 32) | 40), socket.SOCK_STREAM, 0)  # SYS_socket
if fd >= 0:
    opened.append("vsock with high bits")
print("OPENED", opened)
sys.exit(0 if opened else 1)
