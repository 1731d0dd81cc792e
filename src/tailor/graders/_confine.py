"""Confining one python-grader process (Linux): what the child of the fork server does to
itself after fork and before it runs a grader's code. Standard library only: the fork server
runs with `python -I`, outside tailor's import path.

The layers, each enforced by the kernel:
- a fresh session, the environment already empty, every inherited file descriptor closed but
  the result pipe, stdin/stdout/stderr on /dev/null;
- no capabilities (a server run as root keeps its uid in the child, none of its privileges);
- resource limits: CPU seconds, address space, no file writes (RLIMIT_FSIZE 0), few open files;
- a new user and network namespace where the kernel allows one (no network interface at all);
- Landlock: read-only access to the Python installation and the system's shared libraries,
  nothing else anywhere (no server state, no /proc, no /etc, no home), no TCP bind/connect
  (ABI 4+), no signals or abstract sockets outside the process (ABI 6+);
- seccomp: socket(), fork/exec, ptrace, mount, namespaces, kill of any other process, kernel
  keyrings, bpf, module loading... fail with EPERM.
Landlock and seccomp are required: `available()` says why this kernel cannot confine, and then
python graders are refused rather than run unconfined.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import struct
import sys
import sysconfig

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
CLONE_NEWUSER, CLONE_NEWNET, CLONE_THREAD = 0x10000000, 0x40000000, 0x00010000
_LL_CREATE, _LL_ADD_RULE, _LL_RESTRICT = 444, 445, 446  # the same on x86_64 and aarch64
_LL_VERSION = 1
# access rights by the Landlock ABI that introduced them
_FS_RIGHTS = {1: (1 << 13) - 1, 2: 1 << 13, 3: 1 << 14, 5: 1 << 15}
_READ_ONLY = 1 | 4 | 8  # EXECUTE | READ_FILE | READ_DIR
_NET_RIGHTS = 1 | 2  # BIND_TCP | CONNECT_TCP (ABI 4)
_SCOPES = 1 | 2  # ABSTRACT_UNIX_SOCKET | SIGNAL (ABI 6)

_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_DENY = {  # syscall -> number, per architecture (from the kernel's unistd headers)
    "x86_64": dict(socket=41, socketpair=53, tkill=200, fork=57, vfork=58, execve=59, execveat=322, ptrace=101,
                   process_vm_readv=310, process_vm_writev=311, mount=165, umount2=166, unshare=272, setns=308,
                   pidfd_open=434, pidfd_getfd=438, pidfd_send_signal=424, keyctl=250, add_key=248,
                   request_key=249, bpf=321, perf_event_open=298, userfaultfd=323, chroot=161, pivot_root=155,
                   open_by_handle_at=304, name_to_handle_at=303, init_module=175, finit_module=313,
                   delete_module=176, kexec_load=246, kexec_file_load=320, reboot=169, swapon=167, swapoff=168,
                   syslog=103, kcmp=312, personality=135),
    "aarch64": dict(socket=198, socketpair=199, tkill=130, execve=221, execveat=281, ptrace=117,
                    process_vm_readv=270, process_vm_writev=271, mount=40, umount2=39, unshare=97, setns=268,
                    pidfd_open=434, pidfd_getfd=438, pidfd_send_signal=424, keyctl=219, add_key=217,
                    request_key=218, bpf=280, perf_event_open=241, userfaultfd=282, chroot=51, pivot_root=41,
                    open_by_handle_at=265, name_to_handle_at=264, init_module=105, finit_module=273,
                    delete_module=106, kexec_load=104, kexec_file_load=294, reboot=142, swapon=224, swapoff=225,
                    syslog=116, kcmp=272, personality=92),
}
# no such call: glibc then falls back to what the filter can inspect (clone3's flags sit in memory)
_ENOSYS = {"x86_64": dict(clone3=435, io_uring_setup=425, io_uring_enter=426, io_uring_register=427),
           "aarch64": dict(clone3=435, io_uring_setup=425, io_uring_enter=426, io_uring_register=427)}
_CLONE = {"x86_64": 56, "aarch64": 220}
_SIGNAL_SELF = {"x86_64": (62, 234), "aarch64": (129, 131)}  # kill, tgkill: only to this process


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none)."""
    v = _libc.syscall(_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(_LL_VERSION))
    return max(int(v), 0)


def available() -> str | None:
    """None when this machine can confine a grader, else why not (in words for an operator)."""
    if sys.platform != "linux":
        return f"python graders need Linux (Landlock and seccomp); this is {sys.platform}"
    if platform.machine() not in _ARCH:
        return f"python graders need x86_64 or aarch64 for their seccomp filter; this is {platform.machine()}"
    if landlock_abi() < 1:
        return "python graders need the kernel's Landlock LSM (Linux 5.13+, enabled with lsm=...,landlock)"
    return None


def readable_paths() -> list[str]:
    """What a grader may read: the Python installation (standard library, site-packages) and the
    system's shared libraries. Computed once, in the fork server, before any grader runs."""
    paths = set()
    for scheme_vars in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            p = sysconfig.get_path(key, vars=scheme_vars or None)
            if p:
                paths.add(p)
    paths.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")) or p.endswith(".zip"))
    paths.update(os.path.dirname(p) for p in (sys.executable, os.path.realpath(sys.executable)))
    paths.update(["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/etc/ld.so.cache"])
    return sorted(p for p in paths if os.path.exists(p))


def confine(result_fd: int, *, cpu_seconds: int, memory_bytes: int, readable: list[str]) -> None:
    """Apply every layer to this (freshly forked, single-threaded) process; raises OSError when
    a required layer fails, so the grader never runs unconfined."""
    os.setsid()
    _only_fd(result_fd)
    _drop_capabilities()  # a server run as root: its children keep the uid, not the privileges
    _limits(cpu_seconds, memory_bytes)
    _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET)  # best effort: Landlock and seccomp stop the network anyway
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _fail("prctl(NO_NEW_PRIVS)")
    _landlock(readable)
    _seccomp()


def _only_fd(keep: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.closerange(3, keep)
    os.closerange(keep + 1, 65536)


def _drop_capabilities() -> None:
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = bytes(24)  # effective, permitted, inheritable: all empty, both 32-bit halves
    nr = {"x86_64": 126, "aarch64": 91}[platform.machine()]
    if _libc.syscall(nr, ctypes.create_string_buffer(header, 8), ctypes.create_string_buffer(data, 24)) != 0:
        _fail("capset")


def _limits(cpu_seconds: int, memory_bytes: int) -> None:
    # address space counts what the fork server had mapped (Python, preloaded modules) too
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    for what, value in ((resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1)),
                        (resource.RLIMIT_AS, (mapped + memory_bytes,) * 2),
                        (resource.RLIMIT_FSIZE, (0, 0)), (resource.RLIMIT_CORE, (0, 0)),
                        (resource.RLIMIT_NOFILE, (64, 64))):
        resource.setrlimit(what, value)


def _landlock(readable: list[str]) -> None:
    abi = landlock_abi()
    fs = sum(bits for v, bits in _FS_RIGHTS.items() if v <= abi)
    attr = struct.pack("QQQ", fs, _NET_RIGHTS if abi >= 4 else 0, _SCOPES if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    buf = ctypes.create_string_buffer(attr[:size], size)
    ruleset = _libc.syscall(_LL_CREATE, buf, ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        _fail("landlock_create_ruleset")
    try:
        for path in readable:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                rights = _READ_ONLY if os.path.isdir(path) else 1 | 4
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
                if _libc.syscall(_LL_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), rule, ctypes.c_uint32(0)) < 0:
                    _fail(f"landlock_add_rule({os.path.basename(path)})")
            finally:
                os.close(fd)
        if _libc.syscall(_LL_RESTRICT, ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            _fail("landlock_restrict_self")
    finally:
        os.close(ruleset)


def _seccomp() -> None:
    arch = platform.machine()
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    ld_nr, ld_arch, ld_arg0 = (0x20, 0, 0, 0), (0x20, 0, 0, 4), (0x20, 0, 0, 16)
    prog = [ld_arch, (0x15, 1, 0, _ARCH[arch]), (0x06, 0, 0, 0x80000000), ld_nr]
    if arch == "x86_64":  # the x32 ABI's numbers alias ours with bit 30 set: refuse them all
        prog += [(0x35, 0, 1, 0x40000000), (0x06, 0, 0, eperm)]
    for nr in _DENY[arch].values():
        prog += [(0x15, 0, 1, nr), (0x06, 0, 0, eperm)]
    for nr in _ENOSYS[arch].values():
        prog += [(0x15, 0, 1, nr), (0x06, 0, 0, enosys)]
    # clone: threads only (no new process); kill and tgkill: only this process
    prog += [(0x15, 0, 4, _CLONE[arch]), ld_arg0, (0x45, 0, 1, CLONE_THREAD), (0x06, 0, 0, allow),
             (0x06, 0, 0, eperm)]
    for nr in _SIGNAL_SELF[arch]:
        prog += [(0x15, 0, 4, nr), ld_arg0, (0x15, 0, 1, os.getpid()), (0x06, 0, 0, allow), (0x06, 0, 0, eperm)]
    prog.append((0x06, 0, 0, allow))
    filters = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(filters, len(filters))

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Prog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        _fail("prctl(SECCOMP)")


def _fail(what: str):
    err = ctypes.get_errno()
    raise OSError(err, f"{what} failed: {os.strerror(err)}")
