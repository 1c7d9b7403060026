/*
 * Checks uml-xstate-pad.so on this host the way User-Mode Linux meets it
 * on a host with AMX: a tracer restores a stopped child's FPU state with a
 * PTRACE_SETREGSET NT_X86_XSTATE buffer shorter than the host's XSAVE area.
 *
 *   uml-xstate-pad-check short    exit 0 if that SETREGSET fails with EFAULT
 *   uml-xstate-pad-check padded   exit 0 if it succeeds and the child's XMM0
 *                                 then holds what was set (run with the
 *                                 library preloaded)
 *
 * The short buffer is the legacy area and the XSAVE header, where XMM0 is;
 * the host then loads the components past it from the padding.  Exit status
 * 3: this CPU's XSAVE area is no longer than that, so nothing can be short.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <elf.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define XMM0_OFFSET 160
#define SHORT_LEN 576

static unsigned char saved[16384], restored[16384];

static int fail(const char *what)
{
    fprintf(stderr, "uml-xstate-pad-check: %s: %s\n", what, strerror(errno));
    return 2;
}

static pid_t start_stopped_child(void)
{
    pid_t pid = fork();

    if (pid == 0) {
        ptrace(PTRACE_TRACEME, 0, NULL, NULL);
        raise(SIGSTOP);
        _exit(0);
    }
    if (pid > 0 && waitpid(pid, NULL, 0) != pid)
        return -1;
    return pid;
}

static long xstate(enum __ptrace_request req, pid_t pid, unsigned char *buf, size_t len)
{
    struct iovec iov = { buf, len };

    return ptrace(req, pid, (void *)NT_X86_XSTATE, &iov);
}

int main(int argc, char **argv)
{
    unsigned int eax, host_size = 0, ecx, edx;
    int padded, rc;
    pid_t pid;

    if (argc != 2 || (strcmp(argv[1], "short") != 0 && strcmp(argv[1], "padded") != 0)) {
        fprintf(stderr, "usage: uml-xstate-pad-check short|padded\n");
        return 2;
    }
    padded = strcmp(argv[1], "padded") == 0;
    if (!__get_cpuid_count(0xd, 0, &eax, &host_size, &ecx, &edx) || host_size > sizeof saved) {
        fprintf(stderr, "uml-xstate-pad-check: no usable XSAVE size (%u)\n", host_size);
        return 2;
    }
    if (host_size <= SHORT_LEN) {
        printf("uml-xstate-pad-check: the XSAVE area is %u bytes: nothing is short\n", host_size);
        return 3;
    }
    pid = start_stopped_child();
    if (pid < 0)
        return fail("fork");
    if (xstate(PTRACE_GETREGSET, pid, saved, host_size) != 0)
        return fail("GETREGSET");
    memset(saved + XMM0_OFFSET, 0x5a, 16);

    rc = 0;
    if (xstate(PTRACE_SETREGSET, pid, saved, SHORT_LEN) != 0) {
        if (padded || errno != EFAULT)
            rc = fail("SETREGSET of a short buffer");
    } else if (!padded) {
        fprintf(stderr, "uml-xstate-pad-check: the host took a short buffer (%d of %u bytes)\n",
                SHORT_LEN, host_size);
        rc = 1;
    } else if (xstate(PTRACE_GETREGSET, pid, restored, host_size) != 0) {
        rc = fail("GETREGSET after SETREGSET");
    } else if (memcmp(restored + XMM0_OFFSET, saved + XMM0_OFFSET, 16) != 0) {
        fprintf(stderr, "uml-xstate-pad-check: XMM0 is not what was set\n");
        rc = 1;
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    if (rc == 0)
        printf("uml-xstate-pad-check: %s: ok (%d of %u bytes)\n", argv[1], SHORT_LEN, host_size);
    return rc;
}
