/* The arguments of a watched task's syscalls that carry an event, handed
 * by the one program on sys_enter (seq.bpf.c) to each concern's handler.
 * One program instead of a tracepoint per syscall: every syscall tracepoint
 * attached costs every syscall of the host a call, watched or not.
 *
 * The arguments come from the syscall's registers, the x86-64 syscall ABI
 * (di, si, dx, r10, r8, r9): struct pt_regs has the same layout in every
 * kernel, as it is also user space's (asm/ptrace.h). 32-bit syscalls, whose
 * numbers and registers differ, never get here: the sandbox's seccomp filter
 * kills any syscall of another architecture. */
#include <uapi/linux/ptrace.h>
#include "maps.bpf.h"

#define NR_OPEN 2
#define NR_CONNECT 42
#define NR_ACCEPT 43
#define NR_SENDTO 44
#define NR_SENDMSG 46
#define NR_BIND 49
#define NR_LISTEN 50
#define NR_EXECVE 59
#define NR_EXIT_GROUP 231
#define NR_OPENAT 257
#define NR_ACCEPT4 288
#define NR_EXECVEAT 322
#define NR_OPENAT2 437

static __always_inline u64 reg(const unsigned long *field)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), field);
    return v;
}

static __always_inline int is_exec(u32 nr)
{
    return nr == NR_EXECVE || nr == NR_EXECVEAT;
}

/* An exec by a task not marked watched yet: its cgroup decides. */
static __always_inline void unmarked_exec(struct pt_regs *r, u32 nr)
{
    if (nr == NR_EXECVE)
        exec_enter((const char *)reg(&r->di), (const char *const *)reg(&r->si));
    else
        exec_enter((const char *)reg(&r->si), (const char *const *)reg(&r->dx));
}

static __always_inline void syscall_enter(struct pt_regs *r, u32 nr, u64 cg)
{
    switch (nr) {
    case NR_EXECVE:
    case NR_EXECVEAT:
        unmarked_exec(r, nr);
        break;
    case NR_EXIT_GROUP:
        exit_group_enter((int)reg(&r->di));
        break;
    case NR_OPEN:
        open_enter(cg, (const char *)reg(&r->di), (int)reg(&r->si));
        break;
    case NR_OPENAT:
        open_enter(cg, (const char *)reg(&r->si), (int)reg(&r->dx));
        break;
    case NR_OPENAT2:
        openat2_enter(cg, (const char *)reg(&r->si), (const void *)reg(&r->dx));
        break;
    case NR_CONNECT:
        net_enter(cg, EV_CONNECT, (const void *)reg(&r->si), (u32)reg(&r->dx), 0);
        break;
    case NR_SENDTO:
        sendto_enter(cg, (const void *)reg(&r->r8), (u32)reg(&r->r9));
        break;
    case NR_SENDMSG:
        sendmsg_enter(cg, (const void *)reg(&r->si));
        break;
    case NR_BIND:
        net_enter(cg, EV_BIND, (const void *)reg(&r->si), (u32)reg(&r->dx), 0);
        break;
    case NR_LISTEN:
        net_enter(cg, EV_LISTEN, 0, 0, (u32)reg(&r->si));
        break;
    case NR_ACCEPT:
    case NR_ACCEPT4:
        accept_enter(cg, (const void *)reg(&r->si));
        break;
    }
}
