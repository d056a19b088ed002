/* Refused sockets. Sockets are everyday, a refused one (raw without
 * CAP_NET_RAW, packet under seccomp) is not. Attempts of the policy's denied
 * syscalls are reported at entry by seq.bpf.c, from the watched map. */
#include "maps.bpf.h"

TRACEPOINT_PROBE(syscalls, sys_exit_socket)
{
    u64 cg;
    if (!watched_cgroup(&cg) || args->ret >= 0)
        return 0;
    struct ev_syscall e = {};
    fill_hdr(&e.h, EV_SYSCALL, cg);
    e.h.ret = args->ret;
    e.nr = args->__syscall_nr;
    emit(&e, sizeof(e), cg);
    return 0;
}
