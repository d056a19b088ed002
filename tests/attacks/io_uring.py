# Do I/O through io_uring, which bypasses syscall monitoring.
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
SYS_io_uring_setup = 425
params = ctypes.create_string_buffer(120)
print("io_uring_setup", libc.syscall(SYS_io_uring_setup, 8, params), ctypes.get_errno())
