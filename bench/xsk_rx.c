/* A reference AF_XDP receiver on Debian's libxdp (xsk.h), for bench/xdp_bench.py.
 *
 *   xsk_rx IFNAME QUEUE XSKS_MAP_FD [FRAMES]
 *
 * Binds one copy-mode socket to IFNAME/QUEUE, puts it in the XSKMAP whose fd it inherited
 * (the XDP program is aiomb's, attached by the harness: both receivers run behind the same
 * program), then receives until stdin closes, waiting in poll() with a 100 ms timeout like
 * aiomb (no busy-polling), and prints {"received": N, "bytes": B} as JSON.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/if_xdp.h>
#include <xdp/xsk.h>

#define BATCH 256

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s IFNAME QUEUE XSKS_MAP_FD [FRAMES]\n", argv[0]);
        return 2;
    }
    const char *ifname = argv[1];
    int queue = atoi(argv[2]), map_fd = atoi(argv[3]);
    unsigned frames = argc > 4 ? (unsigned)atoi(argv[4]) : 4096, frame_size = 2048;
    size_t len = (size_t)frames * frame_size;
    void *area = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (area == MAP_FAILED) { perror("mmap"); return 1; }

    struct xsk_ring_prod fill = {0};   /* libxdp leaves some cached indexes to the caller */
    struct xsk_ring_cons comp = {0}, rx = {0};
    struct xsk_umem *umem;
    struct xsk_umem_config ucfg = {.fill_size = frames, .comp_size = frames,
                                   .frame_size = frame_size, .frame_headroom = 0, .flags = 0};
    int err = xsk_umem__create(&umem, area, len, &fill, &comp, &ucfg);
    if (err) { fprintf(stderr, "xsk_umem__create: %s\n", strerror(-err)); return 1; }

    struct xsk_socket *xsk;
    struct xsk_socket_config scfg = {.rx_size = frames, .tx_size = 0,
                                     .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
                                     .xdp_flags = 0, .bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP};
    err = xsk_socket__create(&xsk, ifname, queue, umem, &rx, NULL, &scfg);
    if (err) { fprintf(stderr, "xsk_socket__create: %s\n", strerror(-err)); return 1; }
    err = xsk_socket__update_xskmap(xsk, map_fd);
    if (err) { fprintf(stderr, "xsk_socket__update_xskmap: %s\n", strerror(-err)); return 1; }

    __u32 idx, got = xsk_ring_prod__reserve(&fill, frames, &idx);
    if (got != frames) { fprintf(stderr, "fill ring: reserved %u of %u\n", got, frames); return 1; }
    for (unsigned i = 0; i < frames; i++)
        *xsk_ring_prod__fill_addr(&fill, idx + i) = (__u64)i * frame_size;
    xsk_ring_prod__submit(&fill, frames);

    printf("ready\n");
    fflush(stdout);
    struct pollfd fds[2] = {{.fd = xsk_socket__fd(xsk), .events = POLLIN},
                            {.fd = 0, .events = POLLIN}};
    unsigned long long received = 0, bytes = 0;
    for (;;) {
        __u32 ridx, n = xsk_ring_cons__peek(&rx, BATCH, &ridx);
        if (!n) {
            if (poll(fds, 2, 100) < 0 && errno != EINTR) { perror("poll"); break; }
            if (fds[1].revents)
                break;          /* stdin closed (or readable): stop */
            continue;
        }
        __u32 fidx;
        while (xsk_ring_prod__reserve(&fill, n, &fidx) != n)
            ;                   /* cannot happen: the fill ring holds every frame */
        for (__u32 i = 0; i < n; i++) {
            const struct xdp_desc *d = xsk_ring_cons__rx_desc(&rx, ridx + i);
            bytes += d->len;
            *xsk_ring_prod__fill_addr(&fill, fidx + i) = xsk_umem__extract_addr(d->addr) & ~(__u64)(frame_size - 1);
        }
        xsk_ring_cons__release(&rx, n);
        xsk_ring_prod__submit(&fill, n);
        if (xsk_ring_prod__needs_wakeup(&fill))
            recvfrom(xsk_socket__fd(xsk), NULL, 0, MSG_DONTWAIT, NULL, NULL);
        received += n;
    }
    printf("{\"received\": %llu, \"bytes\": %llu}\n", received, bytes);
    xsk_socket__delete(xsk);
    xsk_umem__delete(umem);
    return 0;
}
