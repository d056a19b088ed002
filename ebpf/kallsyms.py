"""Where a kernel function lies, from /proc/kallsyms: a program that reads
the kernel's stack (a helper's result) compares return addresses with it."""

from __future__ import annotations

from pathlib import Path

KALLSYMS = Path("/proc/kallsyms")


def function_range(name: str, kallsyms: Path = KALLSYMS) -> tuple[int, int]:
    """The function's first address and the next symbol's: its code lies
    between. Raises LookupError naming the file when the symbol is missing
    or its address is hidden (kptr_restrict gives zeros)."""
    text = kallsyms.read_bytes()
    at = text.find(f" {name}\n".encode())
    if at < 0:
        raise LookupError(f"{kallsyms}: no kernel symbol {name}")
    lines = text[text.rfind(b"\n", 0, at) + 1:].split(b"\n", 16)
    start = int(lines[0].split()[0], 16)
    following = (int(line.split()[0], 16) for line in lines[1:16] if line.strip())
    end = next((address for address in following if address > start), 0)
    if not start or not end:
        raise LookupError(f"{kallsyms}: the address of {name} is hidden (kernel.kptr_restrict) or its end is unknown")
    return start, end
