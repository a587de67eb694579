"""A tiny eBPF assembler and the bpf(2) calls aiomb needs, through ctypes (no compiler at run time).

Layer: io. ``Asm`` assembles eBPF instructions (64-bit ALU, loads/stores, jumps to labels,
helper calls, map-fd loads) into the kernel's ``struct bpf_insn`` encoding. The module-level
functions wrap bpf(2): map create/update/delete, program load (the verifier log is put in the
error), object info (program id and name), fd by id, and BPF_PROG_TEST_RUN. Each call blocks
only for the system call; errors raise ``BpfError`` (an OSError) naming the command.
"""

import ctypes
import ctypes.util
import os
import platform
import struct

# ---- instruction classes and fields (linux/bpf_common.h, linux/bpf.h) ------------------------

BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_JMP32, BPF_ALU64 = 0, 1, 2, 3, 4, 5, 6, 7
BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
BPF_IMM, BPF_MEM = 0x00, 0x60
BPF_K, BPF_X = 0x00, 0x08
ALU_OPS = {"add": 0x00, "sub": 0x10, "mul": 0x20, "div": 0x30, "or": 0x40, "and": 0x50,
           "lsh": 0x60, "rsh": 0x70, "neg": 0x80, "mod": 0x90, "xor": 0xa0, "mov": 0xb0,
           "arsh": 0xc0}
JMP_OPS = {"ja": 0x00, "jeq": 0x10, "jgt": 0x20, "jge": 0x30, "jset": 0x40, "jne": 0x50,
           "jsgt": 0x60, "jsge": 0x70, "jlt": 0xa0, "jle": 0xb0, "jslt": 0xc0, "jsle": 0xd0}
BPF_CALL, BPF_EXIT = 0x80, 0x90
SIZES = {1: BPF_B, 2: BPF_H, 4: BPF_W, 8: BPF_DW}
BPF_PSEUDO_MAP_FD = 1

# ---- program and map types, commands, helpers, return codes ---------------------------------

BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 0, 1, 2, 3
BPF_PROG_LOAD, BPF_PROG_TEST_RUN, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD = 5, 10, 13, 15
BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_DEVMAP, BPF_MAP_TYPE_XSKMAP = 1, 2, 14, 17
BPF_PROG_TYPE_XDP = 6
BPF_XDP = 37                       # expected attach type of XDP programs
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
BPF_FUNC_MAP_LOOKUP_ELEM, BPF_FUNC_REDIRECT, BPF_FUNC_REDIRECT_MAP = 1, 23, 51
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 0, 1, 2, 3, 4
XDP_MD_DATA, XDP_MD_DATA_END, XDP_MD_DATA_META, XDP_MD_INGRESS_IFINDEX, XDP_MD_RX_QUEUE_INDEX = 0, 4, 8, 12, 16

OBJ_NAME_LEN = 16
ATTR_SIZE = 144                    # sizeof(union bpf_attr) on 6.x; zero-padded

_SYSCALL = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) call failed; ``errno`` is set, ``log`` holds the verifier's log for loads."""

    def __init__(self, errno: int, message: str, log: str = ""):
        super().__init__(errno, message)
        self.log = log


class Asm:
    """Assembles eBPF instructions; ``code()`` returns them as bytes (8 per instruction).

    Registers are ints 0..10 (r0 return value, r1-r5 arguments, r10 frame pointer). Jumps
    take a label name placed later (or earlier) with ``label()``. Layer: io; pure.
    """

    def __init__(self):
        self._insns: list[list] = []       # [code, dst, src, off, imm]; off may be a label
        self._labels: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._insns)

    def _emit(self, code, dst=0, src=0, off=0, imm=0) -> "Asm":
        for reg in (dst, src):
            if not 0 <= reg <= 10:
                raise ValueError(f"eBPF registers are r0..r10, got r{reg}")
        self._insns.append([code, dst, src, off, imm])
        return self

    def label(self, name: str) -> "Asm":
        """Place label ``name`` at the next instruction."""
        if name in self._labels:
            raise ValueError(f"label {name!r} placed twice")
        self._labels[name] = len(self._insns)
        return self

    def alu64(self, op: str, dst: int, src: int | None = None, imm: int = 0) -> "Asm":
        """dst = dst OP src (register) or dst OP imm (when src is None)."""
        code = BPF_ALU64 | ALU_OPS[op]
        if src is None:
            return self._emit(code | BPF_K, dst, 0, 0, imm)
        return self._emit(code | BPF_X, dst, src)

    def alu32(self, op: str, dst: int, src: int | None = None, imm: int = 0) -> "Asm":
        """32-bit ALU (the upper half of dst is zeroed)."""
        code = BPF_ALU | ALU_OPS[op]
        if src is None:
            return self._emit(code | BPF_K, dst, 0, 0, imm)
        return self._emit(code | BPF_X, dst, src)

    def mov(self, dst: int, src: int | None = None, imm: int = 0) -> "Asm":
        """dst = src, or dst = imm (sign-extended 32-bit immediate)."""
        return self.alu64("mov", dst, src, imm)

    def ldx(self, size: int, dst: int, src: int, off: int = 0) -> "Asm":
        """dst = *(u<size*8> *)(src + off)."""
        return self._emit(BPF_LDX | BPF_MEM | SIZES[size], dst, src, off)

    def stx(self, size: int, dst: int, off: int, src: int) -> "Asm":
        """*(u<size*8> *)(dst + off) = src."""
        return self._emit(BPF_STX | BPF_MEM | SIZES[size], dst, src, off)

    def st(self, size: int, dst: int, off: int, imm: int) -> "Asm":
        """*(u<size*8> *)(dst + off) = imm."""
        return self._emit(BPF_ST | BPF_MEM | SIZES[size], dst, 0, off, imm)

    def ld_imm64(self, dst: int, value: int, src: int = 0) -> "Asm":
        """dst = a 64-bit immediate (two instruction slots)."""
        self._emit(BPF_LD | BPF_DW | BPF_IMM, dst, src, 0, value & 0xffffffff)
        return self._emit(0, 0, 0, 0, (value >> 32) & 0xffffffff)

    def ld_map_fd(self, dst: int, map_fd: int) -> "Asm":
        """dst = the map behind ``map_fd`` (the loader turns the fd into a map pointer)."""
        return self.ld_imm64(dst, map_fd, src=BPF_PSEUDO_MAP_FD)

    def jmp(self, op: str, dst: int, target: str, src: int | None = None, imm: int = 0) -> "Asm":
        """if (dst OP src/imm) goto target; ``jmp("ja", 0, target)`` jumps always."""
        code = BPF_JMP | JMP_OPS[op]
        if src is None:
            return self._emit(code | BPF_K, dst, 0, target, imm)
        return self._emit(code | BPF_X, dst, src, target)

    def jmp32(self, op: str, dst: int, target: str, src: int | None = None, imm: int = 0) -> "Asm":
        """Like :meth:`jmp`, comparing the low 32 bits only (for unsigned 32-bit constants)."""
        code = BPF_JMP32 | JMP_OPS[op]
        if src is None:
            return self._emit(code | BPF_K, dst, 0, target, imm)
        return self._emit(code | BPF_X, dst, src, target)

    def call(self, helper: int) -> "Asm":
        """Call a kernel helper by number (arguments in r1-r5, result in r0)."""
        return self._emit(BPF_JMP | BPF_CALL, 0, 0, 0, helper)

    def exit(self) -> "Asm":
        """Return r0."""
        return self._emit(BPF_JMP | BPF_EXIT)

    def code(self) -> bytes:
        """The program as ``struct bpf_insn`` bytes; raises ValueError for unknown labels."""
        out = bytearray()
        for pc, (code, dst, src, off, imm) in enumerate(self._insns):
            if isinstance(off, str):
                if off not in self._labels:
                    raise ValueError(f"jump to undefined label {off!r}")
                off = self._labels[off] - pc - 1
            if not -0x8000 <= off <= 0x7fff:
                raise ValueError(f"jump offset {off} out of range at instruction {pc}")
            out += struct.pack("<BBhi", code, (src << 4) | dst, off,
                               imm - (1 << 32) if imm >= 1 << 31 else imm)
        return bytes(out)


# ---- bpf(2) ----------------------------------------------------------------------------------

def _nr() -> int:
    machine = platform.machine()
    if machine not in _SYSCALL:
        raise OSError(f"bpf(2) syscall number unknown for {machine}")
    return _SYSCALL[machine]


def bpf(cmd: int, attr: ctypes.Array, what: str) -> int:
    """Call bpf(cmd, attr); returns the result, raises BpfError naming ``what``."""
    r = _libc.syscall(_nr(), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if r < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return r


def _attr() -> ctypes.Array:
    buf = ctypes.create_string_buffer(ATTR_SIZE)
    return buf


def _put(buf, fmt: str, offset: int, *values) -> None:
    struct.pack_into(fmt, buf, offset, *values)


def _addr(obj) -> int:
    return ctypes.addressof(obj)


def _name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= OBJ_NAME_LEN or not all(c.isalnum() or c in "_." for c in name):
        raise ValueError(f"BPF object names are at most 15 characters of [A-Za-z0-9_.], got {name!r}")
    return raw


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, *,
               name: str = "", flags: int = 0) -> int:
    """Create a map; returns its fd (close it with os.close)."""
    a = _attr()
    _put(a, "<IIIII", 0, map_type, key_size, value_size, max_entries, flags)
    if name:
        _put(a, f"<{OBJ_NAME_LEN}s", 28, _name(name))
    return bpf(BPF_MAP_CREATE, a, f"creating BPF map {name or map_type!r}")


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    """Set ``key`` to ``value`` (both raw bytes of the map's sizes)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    a = _attr()
    _put(a, "<IIQQQ", 0, map_fd, 0, _addr(k), _addr(v), flags)
    bpf(BPF_MAP_UPDATE_ELEM, a, "updating a BPF map entry")


def map_delete(map_fd: int, key: bytes) -> None:
    """Delete ``key``; raises BpfError (ENOENT) when absent."""
    k = ctypes.create_string_buffer(key, len(key))
    a = _attr()
    _put(a, "<IIQ", 0, map_fd, 0, _addr(k))
    bpf(BPF_MAP_DELETE_ELEM, a, "deleting a BPF map entry")


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under ``key`` (raw bytes), or None when absent."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    a = _attr()
    _put(a, "<IIQQ", 0, map_fd, 0, _addr(k), _addr(v))
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, a, "looking up a BPF map entry")
    except BpfError as exc:
        if exc.errno == 2:
            return None
        raise
    return v.raw


def prog_load(prog_type: int, code: bytes, *, name: str, license: str = "GPL",
              expected_attach_type: int = 0, log_size: int = 1 << 16) -> int:
    """Load a program (verified by the kernel); returns its fd.

    Raises BpfError with the verifier's log in the message when the kernel rejects it.
    """
    if len(code) % 8 or not code:
        raise ValueError("a program is a non-empty sequence of 8-byte instructions")
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license.encode())
    a = _attr()
    _put(a, "<IIQQ", 0, prog_type, len(code) // 8, _addr(insns), _addr(lic))
    _put(a, f"<{OBJ_NAME_LEN}s", 48, _name(name))
    _put(a, "<I", 68, expected_attach_type)
    try:
        return bpf(BPF_PROG_LOAD, a, f"loading BPF program {name!r}")
    except BpfError:
        pass
    # again with a log, to say why
    log = ctypes.create_string_buffer(log_size)
    _put(a, "<IIQ", 24, 1, log_size, _addr(log))
    try:
        return bpf(BPF_PROG_LOAD, a, f"loading BPF program {name!r}")
    except BpfError as exc:
        text = log.value.decode(errors="replace").strip()
        raise BpfError(exc.errno, f"{exc.strerror}; verifier log:\n{text}" if text else exc.strerror,
                       text) from None


def obj_info(fd: int) -> tuple[int, str, int]:
    """(id, name, type) of the program behind ``fd`` (BPF_OBJ_GET_INFO_BY_FD)."""
    info = ctypes.create_string_buffer(232)
    a = _attr()
    _put(a, "<IIQ", 0, fd, len(info), _addr(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, a, "reading BPF program info")
    ptype, pid = struct.unpack_from("<II", info, 0)
    name = struct.unpack_from(f"<{OBJ_NAME_LEN}s", info, 64)[0].split(b"\0", 1)[0].decode(errors="replace")
    return pid, name, ptype


def prog_fd_by_id(prog_id: int) -> int:
    """An fd for the loaded program with id ``prog_id``; raises BpfError (ENOENT) if gone."""
    a = _attr()
    _put(a, "<I", 0, prog_id)
    return bpf(BPF_PROG_GET_FD_BY_ID, a, f"opening BPF program id {prog_id}")


def prog_name_by_id(prog_id: int) -> str | None:
    """The name of the loaded program ``prog_id``, or None when it no longer exists."""
    try:
        fd = prog_fd_by_id(prog_id)
    except BpfError as exc:
        if exc.errno == 2:
            return None
        raise
    try:
        return obj_info(fd)[1]
    finally:
        os.close(fd)


def prog_test_run(prog_fd: int, data: bytes, *, repeat: int = 1, flags: int = 0,
                  batch_size: int = 0, ctx: bytes | None = None, output: bytearray | None = None) -> tuple[int, int]:
    """Run a program on ``data`` (BPF_PROG_TEST_RUN); returns (return value, ns per run).
    ``output`` (a bytearray) receives the frame as the program left it.

    With ``flags=BPF_F_TEST_XDP_LIVE_FRAMES`` an XDP program's XDP_TX/XDP_REDIRECT verdicts
    really send the frame ``repeat`` times (a fast packet generator); ``ctx`` is an xdp_md
    naming the ingress interface and queue. Blocks for the whole run.
    """
    din = ctypes.create_string_buffer(data, len(data))
    a = _attr()
    dout = ctypes.create_string_buffer(len(data) + 4096) if output is not None else None
    _put(a, "<IIIIQQ", 0, prog_fd, 0, len(data), len(dout) if dout else 0, _addr(din), _addr(dout) if dout else 0)
    _put(a, "<II", 32, repeat, 0)
    if ctx is not None:
        cbuf = ctypes.create_string_buffer(ctx, len(ctx))
        _put(a, "<IIQQ", 40, len(ctx), 0, _addr(cbuf), 0)
    _put(a, "<III", 64, flags, 0, batch_size)
    bpf(BPF_PROG_TEST_RUN, a, "running a BPF program (BPF_PROG_TEST_RUN)")
    retval, = struct.unpack_from("<I", a, 4)
    duration, = struct.unpack_from("<I", a, 36)
    if output is not None:
        output[:] = dout.raw[:struct.unpack_from("<I", a, 12)[0]]
    return retval, duration


# ---- aiomb's XDP program ---------------------------------------------------------------------

PROGRAM_NAME = "aiomb_xsk"
STEER_NAME = "aiomb_steer"
PROGRAM_NAMES = (PROGRAM_NAME, STEER_NAME)     # aiomb's programs (a stale one may be replaced)


BPF_FUNC_KTIME_GET_NS, BPF_FUNC_XDP_ADJUST_HEAD, BPF_FUNC_XDP_ADJUST_META = 5, 44, 54
META_MAGIC = 0x6d6f6961          # "aiom", little-endian, first word of aiomb's 16-byte stamp
META_LEN = 16                    # u32 magic, u32 zero, u64 CLOCK_MONOTONIC ns at XDP time
STAMP_META, STAMP_HEAD = "meta", "head"

_stamp_mode = None


def stamp_mode() -> str:
    """Where aiomb's XDP program puts each frame's 16-byte stamp on this kernel: ``"meta"``, in
    the XDP metadata just before the frame (``bpf_xdp_adjust_meta``), or ``"head"``, in front of
    the frame itself (``bpf_xdp_adjust_head``; the receiver takes it off), where the kernel does
    not let XDP programs call ``bpf_xdp_adjust_meta`` (seen on a 6.18 kernel: "program of this
    type cannot use helper bpf_xdp_adjust_meta#54"). Probed once per process."""
    global _stamp_mode
    if _stamp_mode is None:
        a = Asm().mov(6, 1).mov(1, 6).mov(2, imm=-META_LEN).call(BPF_FUNC_XDP_ADJUST_META)
        try:
            os.close(prog_load(BPF_PROG_TYPE_XDP, a.mov(0, imm=XDP_PASS).exit().code(), name="aiomb_probe"))
            _stamp_mode = STAMP_META
        except BpfError as exc:
            if "adjust_meta" not in (exc.log or ""):
                raise
            _stamp_mode = STAMP_HEAD
    return _stamp_mode


def xsk_redirect_program(xsks_map_fd: int, prefilter=None, bypass_ifindex: int = 0, stamp: str | None = None) -> bytes:
    """Stamp the frame, then ``return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);``

    The stamp is 16 bytes (``META_MAGIC``, 0, and ``bpf_ktime_get_ns()``), so receivers get each
    frame's arrival time and can merge the frames of several queues in order. ``stamp`` (default
    :func:`stamp_mode`) says where: ``"meta"``, as XDP metadata just before the frame; ``"head"``,
    in front of the frame, taken off again when the frame goes to the kernel's stack. Frames of
    a queue with a bound socket go to it; all others (no socket, or the process is gone) go on
    to the kernel's stack (which ignores the metadata).

    With a ``prefilter`` (:class:`aiomb.io.Prefilter`) the frames it rejects never reach the
    sockets: they go on to the kernel (XDP_PASS), or, with ``bypass_ifindex`` (inline ports),
    straight out of that interface (``bpf_redirect``).
    """
    stamp = stamp or stamp_mode()
    if stamp not in (STAMP_META, STAMP_HEAD):
        raise ValueError(f"stamp must be {STAMP_META!r} or {STAMP_HEAD!r}, got {stamp!r}")
    head = stamp == STAMP_HEAD
    a = Asm()
    a.mov(6, 1)                                 # r6 = ctx
    if prefilter is not None:
        prefilter.emit(a, accept="accept", reject="reject")
        a.label("reject")
        if bypass_ifindex:
            a.mov(1, imm=bypass_ifindex).mov(2, imm=0).call(BPF_FUNC_REDIRECT)
        else:
            a.mov(0, imm=XDP_PASS)
        a.exit()
        a.label("accept")
    a.mov(8, imm=0)                             # r8 = 1 once the stamp is in front of the frame
    a.call(BPF_FUNC_KTIME_GET_NS)
    a.mov(7, 0)                                 # r7 = now (ns, CLOCK_MONOTONIC)
    a.mov(1, 6).mov(2, imm=-META_LEN)
    a.call(BPF_FUNC_XDP_ADJUST_HEAD if head else BPF_FUNC_XDP_ADJUST_META)     # room for the stamp
    a.jmp("jne", 0, "redirect", imm=0)
    if head:
        a.mov(8, imm=1)
        a.ldx(4, 2, 6, XDP_MD_DATA)             # r2 = ctx->data (the stamp's room)
        a.ldx(4, 3, 6, XDP_MD_DATA_END)         # r3 = ctx->data_end
    else:
        a.ldx(4, 2, 6, XDP_MD_DATA_META)        # r2 = ctx->data_meta
        a.ldx(4, 3, 6, XDP_MD_DATA)             # r3 = ctx->data
    a.mov(4, 2).alu64("add", 4, imm=META_LEN)
    a.jmp("jgt", 4, "redirect", src=3)          # the verifier's bounds check
    a.st(4, 2, 0, META_MAGIC)
    a.st(4, 2, 4, 0)
    a.stx(8, 2, 8, 7)
    a.label("redirect")
    a.ldx(4, 2, 6, XDP_MD_RX_QUEUE_INDEX)       # r2 = ctx->rx_queue_index
    a.ld_map_fd(1, xsks_map_fd)                 # r1 = &xsks
    a.mov(3, imm=XDP_PASS)                      # r3 = default action when the slot is empty
    a.call(BPF_FUNC_REDIRECT_MAP)
    if head:                                    # to the kernel: the frame as it came
        a.jmp("jne", 0, "done", imm=XDP_PASS)
        a.jmp("jeq", 8, "done", imm=0)
        a.mov(1, 6).mov(2, imm=META_LEN).call(BPF_FUNC_XDP_ADJUST_HEAD)
        a.mov(0, imm=XDP_PASS)
        a.label("done")
    a.exit()
    return a.code()


def load_xsk_program(max_queues: int, prefilter=None, bypass_ifindex: int = 0) -> tuple[int, int]:
    """Create the XSKMAP (one slot per RX queue) and load aiomb's program; returns (prog fd, map fd)."""
    map_fd = map_create(BPF_MAP_TYPE_XSKMAP, 4, 4, max(1, max_queues), name="aiomb_xsks")
    try:
        prog_fd = prog_load(BPF_PROG_TYPE_XDP, xsk_redirect_program(map_fd, prefilter, bypass_ifindex),
                            name=PROGRAM_NAME)
    except BaseException:
        os.close(map_fd)
        raise
    return prog_fd, map_fd


def xsk_map_set(map_fd: int, queue: int, sock_fd: int) -> None:
    """Point slot ``queue`` of an XSKMAP at the AF_XDP socket ``sock_fd``."""
    map_update(map_fd, struct.pack("<I", queue), struct.pack("<I", sock_fd))


# ---- frame parsing shared by aiomb's programs --------------------------------------------------

VLAN_TPIDS = (0x8100, 0x88a8, 0x9100)       # 802.1Q, 802.1ad, old QinQ


def htons(v: int) -> int:
    """A 16-bit constant as a little-endian load of its network-order bytes gives it."""
    return ((v & 0xff) << 8) | (v >> 8)


def emit_network_header(a: Asm, *, fail: str, tag: str) -> None:
    """Find the network header after Ethernet and up to two VLAN tags. r6 holds ctx; sets r7 =
    data, r8 = data_end, r9 = the header's offset, r3 = its ethertype (network order, as loaded);
    jumps to ``fail`` when the frame ends first. Uses r2; its labels start with ``tag``."""
    a.ldx(4, 7, 6, XDP_MD_DATA)
    a.ldx(4, 8, 6, XDP_MD_DATA_END)
    a.mov(9, imm=14)
    a.mov(2, 7).alu64("add", 2, imm=14)
    a.jmp("jgt", 2, fail, src=8)
    a.ldx(2, 3, 7, 12)
    for level in range(2):
        for tpid in VLAN_TPIDS:
            a.jmp("jeq", 3, f"{tag}tag{level}", imm=htons(tpid))
        a.jmp("ja", 0, f"{tag}vlan{level}")
        a.label(f"{tag}tag{level}")
        a.mov(2, 7).alu64("add", 2, imm=18 + 4 * level)
        a.jmp("jgt", 2, fail, src=8)
        a.ldx(2, 3, 7, 16 + 4 * level)
        a.mov(9, imm=18 + 4 * level)
        a.label(f"{tag}vlan{level}")


# ---- the workers' steering program -----------------------------------------------------------

def _mix32(a: Asm, reg: int, tmp: int) -> None:
    """reg = a 32-bit avalanche of reg (x ^= x >> 16; x *= 0x45d9f3b, twice; x ^= x >> 16)."""
    for _ in range(2):
        a.mov(tmp, reg).alu32("rsh", tmp, imm=16).alu32("xor", reg, tmp)
        a.alu32("mul", reg, imm=0x45d9f3b)
    a.mov(tmp, reg).alu32("rsh", tmp, imm=16).alu32("xor", reg, tmp)


ICMP_ERRORS = {"s_ipv4": (1, (3, 4, 5, 11, 12)), "s_ipv6": (58, (1, 2, 3, 4))}   # protocol, error types


def _emit_quoted_header(a: Asm, family: str) -> None:
    """If the packet at r9 is an ICMP error quoting a whole IP header of its own family, move r9
    to the quoted header (its address pair is the flow's); else leave it. Uses r0-r3."""
    proto, types = ICMP_ERRORS[family]
    keep = f"{family}_addresses"
    a.mov(2, 7).alu64("add", 2, 9)
    a.mov(3, 2).alu64("add", 3, imm=20 if family == "s_ipv4" else 40)
    a.jmp("jgt", 3, keep, src=8)
    if family == "s_ipv4":
        a.ldx(1, 0, 2, 9).jmp("jne", 0, keep, imm=proto)
        a.ldx(2, 0, 2, 6).jmp("jset", 0, keep, imm=0xff1f)     # a later fragment: no ICMP header
        a.ldx(1, 1, 2, 0).alu64("and", 1, imm=0xf).alu64("lsh", 1, imm=2)
        a.jmp("jlt", 1, keep, imm=20)
        inner, version = 20, 4
    else:
        a.ldx(1, 0, 2, 6).jmp("jne", 0, keep, imm=proto)       # no extension header before it
        a.mov(1, imm=40)
        inner, version = 40, 6
    a.alu64("add", 2, 1)                        # r2: the ICMP header, r1: the IP header's length
    a.mov(3, 2).alu64("add", 3, imm=8 + inner)
    a.jmp("jgt", 3, keep, src=8)
    a.ldx(1, 0, 2, 0)
    for t in types:
        a.jmp("jeq", 0, f"{family}_error", imm=t)
    a.jmp("ja", 0, keep)
    a.label(f"{family}_error")
    a.ldx(1, 0, 2, 8).alu64("rsh", 0, imm=4).jmp("jne", 0, keep, imm=version)
    a.alu64("add", 9, 1).alu64("add", 9, imm=8)


# ---- translated flows: their replies go to the worker that bound them -------------------------
#
# A key of the bindings map is what a translated flow's replies carry (the outer reply tuple),
# 40 bytes: u8 protocol, u8 IP version, 2 zero bytes, source and destination ports (network
# order), source and destination addresses (16 bytes each; IPv4 in the first 4, then zeros).
# Its value is the worker's index (u32). The switch is a one-slot array set to 1 by the first
# binding: until then the programs look nothing up.

BINDING_KEY_LEN = 40
MAX_BINDINGS = 1 << 18          # entries allocated as they come (BPF_F_NO_PREALLOC); 4 MiB of buckets
BPF_F_NO_PREALLOC = 1


def bindings_create() -> tuple[int, int]:
    """The bindings map and its switch (off); returns their fds (close them with os.close)."""
    table = map_create(BPF_MAP_TYPE_HASH, BINDING_KEY_LEN, 4, MAX_BINDINGS, name="aiomb_xlat",
                       flags=BPF_F_NO_PREALLOC)
    try:
        return table, map_create(BPF_MAP_TYPE_ARRAY, 4, 4, 1, name="aiomb_xlat_on")
    except BaseException:
        os.close(table)
        raise


def bindings_switch_on(switch_fd: int) -> None:
    """From now on the steering programs look each TCP/UDP frame up in the bindings map."""
    map_update(switch_fd, bytes(4), (1).to_bytes(4, "little"))


def binding_key(protocol: int, source, destination) -> bytes:
    """The bindings map's key for replies of ``protocol`` from ``source`` to ``destination``,
    each an (ipaddress address, port) pair."""
    (src, sport), (dst, dport) = source, destination
    return struct.pack("!BBxxHH16s16s", protocol, src.version, sport, dport, src.packed, dst.packed)


def binding_key_of(frame: bytes) -> bytes | None:
    """The key the steering program looks ``frame`` up by, or None when it looks nothing up:
    not TCP or UDP right after an IPv4 or IPv6 header (an IPv6 extension header first), or an
    IP fragment (the first one too: the datagram's other fragments carry no ports, and all of
    them must reach one worker)."""
    off, ethertype = _network_header(frame)
    if ethertype == b"\x08\x00" and len(frame) >= off + 20:
        version, protocol, length = 4, frame[off + 9], (frame[off] & 0xf) * 4
        if (frame[off + 6] & 0x3f) or frame[off + 7] or length < 20:
            return None
        src, dst = frame[off + 12:off + 16], frame[off + 16:off + 20]
    elif ethertype == b"\x86\xdd" and len(frame) >= off + 40:
        version, protocol, length = 6, frame[off + 6], 40
        src, dst = frame[off + 8:off + 24], frame[off + 24:off + 40]
    else:
        return None
    ports = off + length
    if protocol not in (6, 17) or len(frame) < ports + 4:
        return None
    return struct.pack("!BBxx4s16s16s", protocol, version, frame[ports:ports + 4], src, dst)


def _emit_binding(a: Asm, family: str, bindings: tuple[int, int], found: str) -> None:
    """With the switch on, look the packet at r9 up in the bindings map (see
    :func:`binding_key_of` for what is looked up): if it is there, r4 = its worker and jump to
    ``found``; else go on with r4 = 0. Uses r0-r5 and 48 bytes of stack."""
    table, switch = bindings
    miss = f"{family}_unbound"
    a.st(4, 10, -4, 0)
    a.mov(2, 10).alu64("add", 2, imm=-4)
    a.ld_map_fd(1, switch)
    a.call(BPF_FUNC_MAP_LOOKUP_ELEM)
    a.jmp("jeq", 0, miss, imm=0)
    a.ldx(4, 0, 0, 0).jmp("jeq", 0, miss, imm=0)
    a.mov(2, 7).alu64("add", 2, 9)
    a.mov(3, 2).alu64("add", 3, imm=20 if family == "s_ipv4" else 40)
    a.jmp("jgt", 3, miss, src=8)
    for off in range(-48, -8, 8):               # the key at r10 - 48, zeroed
        a.st(8, 10, off, 0)
    if family == "s_ipv4":
        a.ldx(2, 0, 2, 6).jmp("jset", 0, miss, imm=0xff3f)     # a fragment, the first one too
        a.ldx(1, 3, 2, 0).alu64("and", 3, imm=0xf).alu64("lsh", 3, imm=2)
        a.jmp("jlt", 3, miss, imm=20)
        a.ldx(4, 0, 2, 12).stx(4, 10, -40, 0)
        a.ldx(4, 0, 2, 16).stx(4, 10, -24, 0)
        a.ldx(1, 1, 2, 9)
        a.st(1, 10, -47, 4)
    else:
        for off in range(8, 40, 4):             # both addresses where the key has them
            a.ldx(4, 0, 2, off).stx(4, 10, off - 48, 0)
        a.mov(3, imm=40)
        a.ldx(1, 1, 2, 6)
        a.st(1, 10, -47, 6)
    a.jmp("jeq", 1, f"{family}_ports", imm=6)
    a.jmp("jne", 1, miss, imm=17)
    a.label(f"{family}_ports")
    a.stx(1, 10, -48, 1)
    a.alu64("add", 2, 3)                        # r2: the TCP/UDP header
    a.mov(3, 2).alu64("add", 3, imm=4)
    a.jmp("jgt", 3, miss, src=8)
    a.ldx(4, 0, 2, 0).stx(4, 10, -44, 0)        # both ports
    a.mov(2, 10).alu64("add", 2, imm=-48)
    a.ld_map_fd(1, table)
    a.call(BPF_FUNC_MAP_LOOKUP_ELEM)
    a.jmp("jeq", 0, miss, imm=0)
    a.ldx(4, 4, 0, 0)
    a.jmp("ja", 0, found)
    a.label(miss)
    a.mov(4, imm=0)                             # as before the calls: worker 0 if the header is cut short


def steering_program(devmap_fd: int, count: int, prefilter=None, bypass_ifindex: int = 0,
                     bindings: tuple[int, int] | None = None) -> bytes:
    """Send each frame to one of ``count`` workers: ``bpf_redirect_map(&workers, k, XDP_PASS)``.

    ``k`` is a symmetric hash of the frame's IP address pair (the same for both directions:
    mix(src) + mix(dst), each IPv6 address folded to 32 bits first), scaled to ``count``: every
    packet between two hosts, fragments included, reaches one worker. An ICMP error (ICMPv4
    types 3, 4, 5, 11, 12; ICMPv6 1 to 4) is hashed by the address pair of the packet it quotes,
    so that a router's error reaches the worker of the flow it is about. Frames that are not IP
    (after up to two VLAN tags) go to worker 0. With ``bindings`` (the fds of
    :func:`bindings_create`), once its switch is on, a TCP or UDP packet that is no fragment is
    first looked up by its tuple (:func:`binding_key_of`): a translated flow's replies go to the
    worker that bound it, whatever their address pair. With a ``prefilter``, the frames it
    rejects go on to the kernel (XDP_PASS), or, with ``bypass_ifindex`` (inline workers),
    straight out of that interface (``bpf_redirect``). Registers: r6 ctx, r7 data, r8
    data_end, r9 the network header's offset, r4 the hash.
    """
    if not 1 <= count <= 1024:
        raise ValueError(f"count must be from 1 to 1024, got {count}")
    a = Asm()
    a.mov(6, 1)
    if prefilter is not None:
        prefilter.emit(a, accept="s_accept", reject="s_reject")
        a.label("s_reject")
        if bypass_ifindex:
            a.mov(1, imm=bypass_ifindex).mov(2, imm=0).call(BPF_FUNC_REDIRECT)
        else:
            a.mov(0, imm=XDP_PASS)
        a.exit()
        a.label("s_accept")
    a.mov(4, imm=0)                             # not IP: worker 0
    emit_network_header(a, fail="s_pick", tag="s_")
    a.jmp("jeq", 3, "s_ipv4", imm=htons(0x0800))
    a.jmp("jeq", 3, "s_ipv6", imm=htons(0x86dd))
    a.jmp("ja", 0, "s_pick")
    for family, length, addr_words in (("s_ipv4", 20, ((12,), (16,))),
                                        ("s_ipv6", 40, ((8, 12, 16, 20), (24, 28, 32, 36)))):
        a.label(family)
        if bindings is not None:
            _emit_binding(a, family, bindings, found="s_send")
        _emit_quoted_header(a, family)
        a.label(f"{family}_addresses")
        a.mov(2, 7).alu64("add", 2, 9)
        a.mov(3, 2).alu64("add", 3, imm=length)
        a.jmp("jgt", 3, "s_pick", src=8)
        for k, words in enumerate(addr_words):  # r5 = one address folded to 32 bits, mixed
            a.ldx(4, 5, 2, words[0])
            for off in words[1:]:
                a.ldx(4, 0, 2, off).alu32("xor", 5, 0)
            _mix32(a, 5, 0)
            if k == 0:
                a.mov(4, 5)
            else:
                a.alu32("add", 4, 5)
        a.jmp("ja", 0, "s_pick")
    a.label("s_pick")                           # k = hash * count >> 32
    a.alu64("mul", 4, imm=count).alu64("rsh", 4, imm=32)
    a.label("s_send")
    a.mov(2, 4)
    a.ld_map_fd(1, devmap_fd)
    a.mov(3, imm=XDP_PASS)
    a.call(BPF_FUNC_REDIRECT_MAP)
    a.exit()
    return a.code()


def forward_program(ifindex: int) -> bytes:
    """``return bpf_redirect(ifindex, 0);``: every frame straight out of that interface (an
    inline worker's frames, from the far end of its veth, out to the wire)."""
    return Asm().mov(1, imm=ifindex).mov(2, imm=0).call(BPF_FUNC_REDIRECT).exit().code()


def _quoted_header(frame: bytes, off: int, ipv4: bool) -> int:
    """Where the steering program reads the address pair: the header an ICMP error at ``off``
    quotes (see :func:`_emit_quoted_header`), else ``off``."""
    if ipv4:
        if frame[off + 9] != 1 or (frame[off + 6] & 0x1f) or frame[off + 7] or (frame[off] & 0xf) * 4 < 20:
            return off
        icmp, inner, version, types = off + (frame[off] & 0xf) * 4, 20, 4, ICMP_ERRORS["s_ipv4"][1]
    else:
        if frame[off + 6] != 58:
            return off
        icmp, inner, version, types = off + 40, 40, 6, ICMP_ERRORS["s_ipv6"][1]
    if len(frame) < icmp + 8 + inner or frame[icmp] not in types or frame[icmp + 8] >> 4 != version:
        return off
    return icmp + 8


def _network_header(frame: bytes) -> tuple[int, bytes]:
    """(offset, ethertype) of the network header after up to two VLAN tags, as the programs find it."""
    off, ethertype = 14, frame[12:14]
    tpids = [t.to_bytes(2, "big") for t in VLAN_TPIDS]
    for level in range(2):
        if ethertype in tpids and len(frame) >= 18 + 4 * level:
            ethertype, off = frame[16 + 4 * level:18 + 4 * level], 18 + 4 * level
    return off, ethertype


def steering_hash(frame: bytes, count: int, bindings: dict | None = None) -> int:
    """The worker :func:`steering_program` sends ``frame`` to (for tests and tools); ``bindings``
    models its bindings map with the switch on (:func:`binding_key` -> worker)."""
    def mix(x: int) -> int:
        for _ in range(2):
            x = ((x ^ (x >> 16)) * 0x45d9f3b) & 0xffffffff
        return x ^ (x >> 16)

    if bindings:
        key = binding_key_of(frame)
        if key in bindings:
            return bindings[key]
    off, ethertype = _network_header(frame)
    words = {b"\x08\x00": ((12,), (16,)), b"\x86\xdd": ((8, 12, 16, 20), (24, 28, 32, 36))}.get(ethertype)
    if words is None or len(frame) < off + (20 if ethertype == b"\x08\x00" else 40):
        return 0
    off = _quoted_header(frame, off, ethertype == b"\x08\x00")
    h = 0
    for addr in words:
        folded = 0
        for w in addr:
            folded ^= int.from_bytes(frame[off + w:off + w + 4], "little")
        h = (h + mix(folded)) & 0xffffffff
    return (h * count) >> 32
