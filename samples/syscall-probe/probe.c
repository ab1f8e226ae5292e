/* Tries the system calls a container's seccomp filter decides about and prints
 * `name=ok` or `name=<strerror>` for each. Built static (gcc -static) so it runs in
 * an image with no libc; the Linux-container tests put it in a busybox image. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    printf("%s=%s\n", name, rc < 0 ? strerror(errno) : "ok");
}

int main(void) {
    /* The kernel keyring is not namespaced: Docker blocks it. */
    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0));
    report("add_key", syscall(SYS_add_key, "user", "skiff", "x", 1, -3));
    /* Every socket family but AF_VSOCK. */
    report("socket_vsock", socket(40, SOCK_STREAM, 0));
    report("socket_inet", socket(AF_INET, SOCK_STREAM, 0));
    /* personality: the query and plain Linux, not READ_IMPLIES_EXEC. */
    report("personality_query", syscall(SYS_personality, 0xffffffffUL));
    report("personality_linux", syscall(SYS_personality, 0UL));
    report("personality_exec", syscall(SYS_personality, 0x0400000UL));
    /* clone without namespace flags, and with a new mount namespace. */
    long child = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (child == 0) _exit(0);
    if (child > 0) waitpid(child, NULL, 0);
    report("clone", child);
    child = syscall(SYS_clone, 0x00020000 /* CLONE_NEWNS */ | SIGCHLD, 0, 0, 0, 0);
    if (child == 0) _exit(0);
    if (child > 0) waitpid(child, NULL, 0);
    report("clone_newns", child);
    /* Calls Docker allows only with capabilities containers lack. */
    report("get_mempolicy", syscall(SYS_get_mempolicy, NULL, NULL, 0, NULL, 0));
    report("kcmp", syscall(SYS_kcmp, getpid(), getpid(), 0, 0, 0));
    return 0;
}
