# Become root in a new user namespace, the door to many kernel bugs.
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
print("unshare", libc.unshare(CLONE_NEWUSER), ctypes.get_errno())
