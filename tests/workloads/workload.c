/* Workloads with a known syscall behaviour, built static so the dynamic
 * loader adds no events of its own. Used by the sensor tests and benches.
 *
 *   workload basic PATH PORT  open PATH, connect to 127.0.0.1:PORT, exit 7
 *   workload seq K            K rounds of getppid getuid getgid geteuid, exit 0
 *   workload flood PATH N     open and close PATH N times, exit 0
 *   workload spread PATH N    open PATH.0 ... PATH.<N-1> (each a distinct
 *                             path, missing or not), closing those that open
 *   workload phase MARKS K    for each mark: a marker syscall, then K rounds
 *                             of seq's loop; exit 0. A mark is p (getpid)
 *                             or t (gettid)
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int basic(const char *path, int port)
{
    int fd = open(path, O_RDONLY);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(s, (struct sockaddr *)&sa, sizeof(sa));
    (void)fd;
    return 7;
}

static int seq(long rounds)
{
    for (long i = 0; i < rounds; i++) {
        syscall(SYS_getppid);
        syscall(SYS_getuid);
        syscall(SYS_getgid);
        syscall(SYS_geteuid);
    }
    return 0;
}

static int flood(const char *path, long n)
{
    for (long i = 0; i < n; i++)
        close(open(path, O_RDONLY));
    return 0;
}

static int spread(const char *path, long n)
{
    char name[256];
    for (long i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "%s.%ld", path, i);
        int fd = open(name, O_RDONLY);
        if (fd >= 0)
            close(fd);
    }
    return 0;
}

/* Benign runs use one marker throughout; a run that mixes them makes only
 * n-grams the benign runs made, when K >= 2: only the order, over more than
 * an n-gram, is new. */
static int phase(const char *marks, long rounds)
{
    for (const char *m = marks; *m; m++) {
        syscall(*m == 't' ? SYS_gettid : SYS_getpid);
        seq(rounds);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "basic"))
        return basic(argv[2], atoi(argv[3]));
    if (argc == 3 && !strcmp(argv[1], "seq"))
        return seq(atol(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "flood"))
        return flood(argv[2], atol(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "spread"))
        return spread(argv[2], atol(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "phase"))
        return phase(argv[2], atol(argv[3]));
    fprintf(stderr, "usage: workload basic PATH PORT | seq K | flood PATH N | phase MARKS K\n");
    return 2;
}
