/*
 * Preloaded into User-Mode Linux kernels before 6.13 (scripts/ktls-vm).
 *
 * Those kernels restore a process's FPU state with
 * ptrace(PTRACE_SETREGSET, pid, NT_X86_XSTATE, iov) and a buffer sized at
 * their build (2696 bytes, the AVX-512 maximum).  The host kernel takes that
 * request only when the buffer holds its whole XSAVE area (CPUID leaf 0xD,
 * sub-leaf 0, EBX): 11008 bytes on a CPU with AMX, so there it fails with
 * EFAULT and UML kills init.  A longer buffer is cut to size by the host, a
 * shorter one is not.
 *
 * Here a short SETREGSET of NT_X86_XSTATE is passed on in a buffer of the
 * host's size: UML's bytes, then zeros.  The XSAVE header in UML's bytes
 * came from a GETREGSET of the same host process, which never asked for
 * AMX, so it lists none of the components past them: the host loads those
 * in their initial state and does not read the zeros.  Every other request
 * goes to glibc's ptrace() untouched.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

/* The legacy area and the header (512 + 64 bytes) begin every XSAVE area. */
#define XSAVE_HEADER_END 576
#define XSAVE_MAX_SIZE 16384

typedef long (*ptrace_fn)(enum __ptrace_request, pid_t, void *, void *);

static unsigned int host_xsave_size(void)
{
    unsigned int eax, ebx, ecx, edx;

    if (!__get_cpuid_count(0xd, 0, &eax, &ebx, &ecx, &edx))
        return 0;
    return ebx;
}

/* Static, not on the stack: UML calls ptrace() on its own small kernel
 * stacks, from one host thread. */
static unsigned char area[XSAVE_MAX_SIZE] __attribute__((aligned(64)));

static long set_xstate_padded(ptrace_fn real, pid_t pid, void *addr, struct iovec *iov,
                              size_t host_size)
{
    struct iovec padded = { area, host_size };

    memset(area, 0, host_size);
    memcpy(area, iov->iov_base, iov->iov_len);
    return real(PTRACE_SETREGSET, pid, addr, &padded);
}

long ptrace(enum __ptrace_request request, ...)
{
    static ptrace_fn real;
    va_list ap;
    pid_t pid;
    void *addr, *data;
    struct iovec *iov;
    size_t host_size;

    va_start(ap, request);
    pid = va_arg(ap, pid_t);
    addr = va_arg(ap, void *);
    data = va_arg(ap, void *);
    va_end(ap);

    if (real == NULL) {
        real = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
        if (real == NULL) {
            errno = ENOSYS;
            return -1;
        }
    }

    iov = data;
    if (request == PTRACE_SETREGSET && (uintptr_t)addr == NT_X86_XSTATE && iov != NULL
        && iov->iov_len >= XSAVE_HEADER_END) {
        host_size = host_xsave_size();
        if (host_size > iov->iov_len && host_size <= XSAVE_MAX_SIZE)
            return set_xstate_padded(real, pid, addr, iov, host_size);
    }
    return real(request, pid, addr, data);
}
