/* bastion-launch: the child side of starting a sandbox, what runs between
 * the supervisor's spawn and the tool's exec.
 *
 * A small program rather than Python's preexec_fn, because a preexec_fn
 * makes the supervisor fork its whole address space (BCC's compiler, torch)
 * where this is started by vfork: a sandbox starts in a few milliseconds.
 *
 * It starts a session of its own: the node's terminal is not the tool's
 * (/dev/tty), so it cannot type into it (TIOCSTI), and where the kernel
 * groups sessions for the scheduler (autogroups), each sandbox is one
 * group, weighed against the node's and other sandboxes' as a whole, however
 * many processes it runs.
 *
 * It unshares namespaces and forks twice. The first process stays behind,
 * outside the pid namespace, as the reaper the supervisor waits on. Its
 * child is pid 1 of the new namespace: a small init that starts the tool as
 * pid 2, reaps orphans and exits with the tool's status. Each of the two
 * dies by PR_SET_PDEATHSIG when its parent dies, and when a pid namespace's
 * init dies the kernel kills every process in it: so when the supervisor
 * dies, by any signal, the whole sandbox dies, whatever the tool did to its
 * own parent-death signal, and the tool cannot signal either of them
 * (another pid namespace, another user, Landlock's signal scope).
 *
 * The tool's process mounts each probed copy of a TLS library over the
 * library (-b), so that the sensor's uprobes trap sandboxed processes only
 * (ebpf/tls_libraries.py), and a private /proc, and only then enters the
 * sandbox's cgroups: from there on the sensor watches it, and this setup is
 * not mistaken for the tool's. It drops to the policy's user, loses every
 * capability, sets no_new_privs, and applies Landlock and seccomp last, so
 * nothing after them needs a right they remove.
 *
 * The supervisor builds everything that can be refused (the Landlock
 * ruleset, the seccomp program) and passes it as descriptors, so errors
 * here are only the kernel's. The tool's environment comes the same way
 * (-v: NUL-separated NAME=value): the launcher itself runs as root with
 * none, so nothing a policy sets can steer it, and no value is shown in
 * its command line, which every user can read. The report pipe (-e) closes when the tool has
 * been executed, confined, or holds the one-line reason it was not (also
 * on stderr; exit 126, or 127 for a tool that cannot be executed): so the
 * supervisor knows the tool is inside the sandbox before it goes on.
 * With -c, the sandbox runs on those CPUs only (the node keeps another for
 * its own threads; the seccomp program then refuses sched_setaffinity).
 *
 *   bastion-launch -f CLONE_FLAGS -u UID -g GID -n HOSTNAME -w WORKDIR
 *                  -l RULESET_FD -a PROC_ACCESS -s SECCOMP_FD -e REPORT_FD -v ENV_FD
 *                  [-c CPU,CPU...] [-p CGROUP_PROCS_FILE]... [-r RESOURCE:LIMIT]...
 *                  [-b COPY:LIBRARY]... -- TOOL ARG...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/landlock.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_PROCS 8
#define MAX_RLIMITS 16
#define MAX_BINDS 8
#define MAX_FILTER 4096 /* BPF instructions, the kernel's own limit */
#define MAX_ENV_BYTES 65536
#define MAX_ENV 512

struct launch {
    int flags;
    uid_t uid;
    gid_t gid;
    const char *hostname;
    const char *workdir;
    int ruleset_fd;
    uint64_t proc_access;
    int seccomp_fd;
    int env_fd;
    const char *procs[MAX_PROCS];
    int nprocs;
    int rlimit_res[MAX_RLIMITS];
    rlim_t rlimit_val[MAX_RLIMITS];
    int nrlimits;
    const char *bind_from[MAX_BINDS];
    const char *bind_to[MAX_BINDS];
    int nbinds;
    int pinned; /* -c given: run on cpus only */
    cpu_set_t cpus;
};

static int report_fd = -1; /* -e: where a failure's reason goes */

/* The reason on stderr and in the report pipe, then exit with code. */
static void fail(int code, const char *what, const char *why)
{
    dprintf(2, "bastion-launch: %s%s%s\n", what, why ? ": " : "", why ? why : "");
    if (report_fd >= 0)
        dprintf(report_fd, "%s%s%s", what, why ? ": " : "", why ? why : "");
    _exit(code);
}

static void die(const char *what)
{
    fail(126, what, strerror(errno));
}

static void usage(const char *why)
{
    fail(126, why, NULL);
}

static void die_with_parent(void)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0))
        die("PR_SET_PDEATHSIG");
}

/* An exit status as a shell would report it: the code, or 128 + signal. */
static int status_of(int status)
{
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void close_all(void)
{
    syscall(SYS_close_range, 0, ~0U, 0);
}

/* The reaper: close everything (so the supervisor sees EOF on the tool's
 * output) and exit with init's status. */
static void reap(pid_t init)
{
    int status;
    close_all();
    while (waitpid(init, &status, 0) < 0)
        if (errno != EINTR)
            _exit(126);
    _exit(status_of(status));
}

/* pid 1 of the sandbox: reap every orphan until the tool ends, then exit
 * with its status; the kernel then kills whatever the tool left behind. */
static void init_loop(pid_t tool)
{
    int status;
    close_all();
    for (;;) {
        pid_t pid = wait(&status);
        if (pid == tool)
            _exit(status_of(status));
        if (pid < 0 && errno != EINTR)
            _exit(126);
    }
}

/* Rules bind to the mount they were opened on: the sandbox's own /proc is
 * added here, after mounting it. */
static void allow_proc(const struct launch *l)
{
    int fd = open("/proc", O_PATH | O_CLOEXEC);
    if (fd < 0)
        die("opening /proc");
    struct landlock_path_beneath_attr rule = {.allowed_access = l->proc_access, .parent_fd = fd};
    if (syscall(SYS_landlock_add_rule, l->ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, &rule, 0))
        die("landlock rule for /proc");
    close(fd);
}

static void enter_cgroups(const struct launch *l)
{
    for (int i = 0; i < l->nprocs; i++) {
        int fd = open(l->procs[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1)
            die(l->procs[i]);
        close(fd);
    }
}

/* The tool's environment, read whole from its descriptor. */
static char **read_env(int fd)
{
    static char buf[MAX_ENV_BYTES + 1];
    static char *env[MAX_ENV + 1];
    ssize_t n = pread(fd, buf, MAX_ENV_BYTES + 1, 0);
    if (n < 0 || n > MAX_ENV_BYTES || (n > 0 && buf[n - 1] != 0))
        usage("the environment is unreadable, torn or over 64 KiB");
    close(fd);
    int count = 0;
    for (ssize_t i = 0; i < n; i += strlen(buf + i) + 1) {
        if (count == MAX_ENV)
            usage("the environment has over 512 variables");
        env[count++] = buf + i;
    }
    env[count] = NULL;
    return env;
}

static void load_seccomp(const struct launch *l)
{
    static struct sock_filter prog[MAX_FILTER];
    ssize_t n = pread(l->seccomp_fd, prog, sizeof(prog), 0);
    if (n <= 0 || n % sizeof(struct sock_filter))
        usage("the seccomp program is empty or torn");
    close(l->seccomp_fd);
    struct sock_fprog fprog = {.len = n / sizeof(struct sock_filter), .filter = prog};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog))
        die("loading the seccomp filter");
}

/* In this mount namespace only: read-only, as the library is to the tool. */
static void bind_copies(const struct launch *l)
{
    for (int i = 0; i < l->nbinds; i++) {
        if (mount(l->bind_from[i], l->bind_to[i], NULL, MS_BIND, NULL) ||
            mount(NULL, l->bind_to[i], NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL))
            die(l->bind_to[i]);
    }
}

static void confine(const struct launch *l)
{
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
        die("making / private");
    bind_copies(l);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
        die("mounting /proc");
    allow_proc(l);
    if (sethostname(l->hostname, strlen(l->hostname)))
        die("sethostname");
    enter_cgroups(l);
    if (chdir(l->workdir))
        die("entering the workdir");
    /* opens nothing after the open-files limit */
    for (int i = 0; i < l->nrlimits; i++) {
        struct rlimit r = {l->rlimit_val[i], l->rlimit_val[i]};
        if (setrlimit(l->rlimit_res[i], &r))
            die("setrlimit");
    }
    if (setgroups(0, NULL) || setgid(l->gid) || setuid(l->uid))
        die("dropping to the policy's user"); /* from root to another uid: all capabilities go */
    die_with_parent(); /* after setuid, which clears the parent-death signal */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        die("no_new_privs");
    if (syscall(SYS_landlock_restrict_self, l->ruleset_fd, 0))
        die("landlock_restrict_self");
    close(l->ruleset_fd);
    load_seccomp(l);
}

static long number(const char *s, const char *what)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno || *end || end == s)
        usage(what);
    return (long)v;
}

static void parse_cpus(char *list, struct launch *l)
{
    CPU_ZERO(&l->cpus);
    for (char *cpu = strtok(list, ","); cpu; cpu = strtok(NULL, ",")) {
        long n = number(cpu, "-c: not a comma-separated list of CPU numbers");
        if (n < 0 || n >= CPU_SETSIZE)
            usage("-c: a CPU number out of range");
        CPU_SET(n, &l->cpus);
    }
    l->pinned = 1;
}

static int parse(int argc, char **argv, struct launch *l)
{
    int opt;
    *l = (struct launch){.ruleset_fd = -1, .seccomp_fd = -1, .env_fd = -1, .uid = (uid_t)-1, .gid = (gid_t)-1};
    while ((opt = getopt(argc, argv, "+f:u:g:n:w:l:a:s:e:v:c:p:r:b:")) != -1) {
        switch (opt) {
        case 'f': l->flags = (int)number(optarg, "-f: not a number"); break;
        case 'u': l->uid = (uid_t)number(optarg, "-u: not a number"); break;
        case 'g': l->gid = (gid_t)number(optarg, "-g: not a number"); break;
        case 'n': l->hostname = optarg; break;
        case 'w': l->workdir = optarg; break;
        case 'l': l->ruleset_fd = (int)number(optarg, "-l: not a number"); break;
        case 'a': l->proc_access = (uint64_t)number(optarg, "-a: not a number"); break;
        case 's': l->seccomp_fd = (int)number(optarg, "-s: not a number"); break;
        case 'v': l->env_fd = (int)number(optarg, "-v: not a number"); break;
        case 'c': parse_cpus(optarg, l); break;
        case 'e':
            report_fd = (int)number(optarg, "-e: not a number");
            /* closes at the tool's exec; the reaper and init close it at once */
            if (fcntl(report_fd, F_SETFD, FD_CLOEXEC))
                die("-e: not a descriptor");
            break;
        case 'p':
            if (l->nprocs == MAX_PROCS)
                usage("-p: too many cgroups");
            l->procs[l->nprocs++] = optarg;
            break;
        case 'r': {
            char *colon = strchr(optarg, ':');
            if (!colon || l->nrlimits == MAX_RLIMITS)
                usage("-r: not RESOURCE:LIMIT, or too many");
            *colon = 0;
            l->rlimit_res[l->nrlimits] = (int)number(optarg, "-r: resource not a number");
            l->rlimit_val[l->nrlimits++] = (rlim_t)number(colon + 1, "-r: limit not a number");
            break;
        }
        case 'b': {
            char *colon = strchr(optarg, ':');
            if (!colon || l->nbinds == MAX_BINDS)
                usage("-b: not COPY:LIBRARY, or too many");
            *colon = 0;
            l->bind_from[l->nbinds] = optarg;
            l->bind_to[l->nbinds++] = colon + 1;
            break;
        }
        default: usage("unknown option");
        }
    }
    if (!l->hostname || !l->workdir || l->ruleset_fd < 0 || l->seccomp_fd < 0 || report_fd < 0 || l->env_fd < 0 ||
        l->uid == (uid_t)-1 || l->gid == (gid_t)-1 || optind >= argc)
        usage("-u, -g, -n, -w, -l, -s, -e, -v and a command are required");
    return optind;
}

int main(int argc, char **argv)
{
    struct launch l;
    int cmd = parse(argc, argv, &l);
    char **env = read_env(l.env_fd);
    pid_t supervisor = getppid();
    die_with_parent();
    if (getppid() != supervisor) /* it died before the signal was armed */
        _exit(128 + SIGKILL);
    if (setsid() < 0) /* no controlling terminal, and a scheduling group of its own */
        die("setsid");
    if (l.pinned && sched_setaffinity(0, sizeof(l.cpus), &l.cpus)) /* the reaper and init too */
        die("-c: sched_setaffinity");
    if (unshare(l.flags))
        die("unshare");
    pid_t init = fork();
    if (init < 0)
        die("fork");
    if (init)
        reap(init); /* the reaper, outside the sandbox */
    die_with_parent(); /* init: dies with the reaper, and the namespace with it */
    pid_t tool = fork();
    if (tool < 0)
        die("fork");
    if (tool)
        init_loop(tool);
    confine(&l); /* the tool, pid 2 */
    environ = env; /* execvp searches the tool's PATH, as subprocess did */
    execvp(argv[cmd], argv + cmd);
    fail(127, argv[cmd], strerror(errno));
}
