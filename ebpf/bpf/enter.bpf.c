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
#include <asm/unistd.h>
#include "maps.bpf.h"

static __always_inline u64 reg(const unsigned long *field)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), field);
    return v;
}

static __always_inline int is_exec(u32 nr)
{
    return nr == __NR_execve || nr == __NR_execveat;
}

/* An exec, marked task or not: exec_enter checks the cgroup itself, so a
 * task's first exec in a watched cgroup marks it. */
static __always_inline void exec_syscall(struct pt_regs *r, u32 nr)
{
    if (nr == __NR_execve)
        exec_enter((const char *)reg(&r->di), (const char *const *)reg(&r->si));
    else
        exec_enter((const char *)reg(&r->si), (const char *const *)reg(&r->dx));
}

static __always_inline void syscall_enter(struct pt_regs *r, u32 nr, u64 cg)
{
    switch (nr) {
    case __NR_execve:
    case __NR_execveat:
        exec_syscall(r, nr);
        break;
    case __NR_exit_group:
        exit_group_enter((int)reg(&r->di));
        break;
    case __NR_open:
        open_enter(cg, (const char *)reg(&r->di), (int)reg(&r->si));
        break;
    case __NR_openat:
        open_enter(cg, (const char *)reg(&r->si), (int)reg(&r->dx));
        break;
    case __NR_openat2:
        openat2_enter(cg, (const char *)reg(&r->si), (const void *)reg(&r->dx));
        break;
    case __NR_connect:
        net_enter(cg, EV_CONNECT, (const void *)reg(&r->si), (u32)reg(&r->dx), 0);
        break;
    case __NR_sendto:
        sendto_enter(cg, (const void *)reg(&r->r8), (u32)reg(&r->r9));
        break;
    case __NR_sendmsg:
        sendmsg_enter(cg, (const void *)reg(&r->si));
        break;
    case __NR_bind:
        net_enter(cg, EV_BIND, (const void *)reg(&r->si), (u32)reg(&r->dx), 0);
        break;
    case __NR_listen:
        net_enter(cg, EV_LISTEN, 0, 0, (u32)reg(&r->si));
        break;
    case __NR_accept:
    case __NR_accept4:
        accept_enter(cg, (const void *)reg(&r->si));
        break;
    }
}
