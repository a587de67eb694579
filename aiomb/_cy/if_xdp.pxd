# Extern declarations for AF_XDP sockets: <linux/if_xdp.h>, and the socket, mmap and errno
# calls that drive them. Declarations only; the code is in xsk.pxi.

from libc.stdint cimport uint16_t, uint32_t, uint64_t

cdef extern from "<linux/if_xdp.h>" nogil:
    enum:
        XDP_SHARED_UMEM
        XDP_COPY
        XDP_ZEROCOPY
        XDP_USE_NEED_WAKEUP
        XDP_RING_NEED_WAKEUP
        XDP_MMAP_OFFSETS
        XDP_RX_RING
        XDP_TX_RING
        XDP_UMEM_REG
        XDP_UMEM_FILL_RING
        XDP_UMEM_COMPLETION_RING
        XDP_STATISTICS
        XDP_OPTIONS
        XDP_OPTIONS_ZEROCOPY
        XDP_PGOFF_RX_RING
        XDP_PGOFF_TX_RING
    # 64-bit page offsets (ULL constants)
    unsigned long long XDP_UMEM_PGOFF_FILL_RING
    unsigned long long XDP_UMEM_PGOFF_COMPLETION_RING

    struct sockaddr_xdp:
        uint16_t sxdp_family
        uint16_t sxdp_flags
        uint32_t sxdp_ifindex
        uint32_t sxdp_queue_id
        uint32_t sxdp_shared_umem_fd

    struct xdp_ring_offset:
        uint64_t producer
        uint64_t consumer
        uint64_t desc
        uint64_t flags

    struct xdp_mmap_offsets:
        xdp_ring_offset rx
        xdp_ring_offset tx
        xdp_ring_offset fr
        xdp_ring_offset cr

    struct xdp_umem_reg:
        uint64_t addr
        uint64_t len
        uint32_t chunk_size
        uint32_t headroom
        uint32_t flags

    struct xdp_statistics:
        uint64_t rx_dropped
        uint64_t rx_invalid_descs
        uint64_t tx_invalid_descs
        uint64_t rx_ring_full
        uint64_t rx_fill_ring_empty_descs
        uint64_t tx_ring_empty_descs

    struct xdp_desc:
        uint64_t addr
        uint32_t len
        uint32_t options

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    enum:
        SOCK_RAW
        SOCK_CLOEXEC
        MSG_DONTWAIT
        SOL_SOCKET
        SO_SNDBUF
    int socket(int domain, int type, int protocol)
    int bind(int fd, const sockaddr *addr, socklen_t len)
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
    ssize_t sendto(int fd, const void *buf, size_t n, int flags, const sockaddr *addr, socklen_t len)
    ssize_t recvfrom(int fd, void *buf, size_t n, int flags, sockaddr *addr, socklen_t *len)

cdef extern from * nogil:
    """
    #ifndef AF_XDP
    #define AF_XDP 44
    #endif
    #ifndef SOL_XDP
    #define SOL_XDP 283
    #endif
    #ifndef XDP_MAX_TX_SKB_BUDGET
    #define XDP_MAX_TX_SKB_BUDGET 9
    #endif
    /* Ring indexes are shared with the kernel: acquire what it produced, release what we did. */
    static inline unsigned int aiomb_load_acquire(const unsigned int *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline unsigned int aiomb_load_relaxed(const unsigned int *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void aiomb_store_release(unsigned int *p, unsigned int v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline void aiomb_full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    """
    enum:
        AF_XDP
        SOL_XDP
        XDP_MAX_TX_SKB_BUDGET
    uint32_t aiomb_load_acquire(const uint32_t *p)
    uint32_t aiomb_load_relaxed(const uint32_t *p)
    void aiomb_store_release(uint32_t *p, uint32_t v)
    void aiomb_full_fence()

cdef extern from "<sys/mman.h>" nogil:
    enum:
        PROT_READ
        PROT_WRITE
        MAP_SHARED
        MAP_PRIVATE
        MAP_ANONYMOUS
        MAP_POPULATE
    void *MAP_FAILED
    void *mmap(void *addr, size_t len, int prot, int flags, int fd, long long off)
    int munmap(void *addr, size_t len)

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN
        EBUSY
        ENOBUFS
        ENETDOWN
        EINTR
