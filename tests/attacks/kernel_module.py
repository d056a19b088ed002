# Load a kernel module (a rootkit's first step).
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
SYS_init_module, SYS_finit_module = 175, 313
print("init_module", libc.syscall(SYS_init_module, b"\x7fELF", 4, b""), ctypes.get_errno())
print("finit_module", libc.syscall(SYS_finit_module, 0, b"", 0), ctypes.get_errno())
