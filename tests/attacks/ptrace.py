# Attach to another process to read its memory.
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
print("ptrace", libc.ptrace(PTRACE_ATTACH, 1, None, None), ctypes.get_errno())
