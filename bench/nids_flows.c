/*
 * nids_flows: libnids baseline for the aiomb benchmarks.
 *
 * Reads a pcap file with libnids, tracks every TCP connection and prints one
 * JSON line of counters.  By default both directions of every stream are
 * collected (reassembled into libnids' buffers) and their bytes counted on
 * NIDS_DATA.  With --no-collect, connections are still followed to their end
 * (by asking only for urgent data, which keeps libnids' listener alive) but
 * no stream data is buffered; the bytes are then taken from the half-streams'
 * totals when the connection ends.  TCP checksum verification is off unless
 * --verify-checksums is given.
 *
 * client_bytes counts bytes sent by clients, server_bytes bytes sent by
 * servers.  seconds is the CLOCK_MONOTONIC time spent in nids_run().
 *
 * Usage: nids_flows [--no-collect] [--verify-checksums] FILE.pcap
 */
#define _DEFAULT_SOURCE

#include <nids.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define TCP_STREAMS (1 << 16) /* hash size; libnids tracks 3/4 of it at once */
#define HOSTS (1 << 16)

static struct {
    unsigned long long packets, conn_starts, closes, resets, timed_out,
        open_at_exit, client_bytes, server_bytes, warnings;
} count;

static int collect = 1;

/* Called for every IP packet before any processing. */
static void on_ip_frag(struct ip *packet, int len)
{
    (void)packet;
    (void)len;
    count.packets++;
}

/* Replaces libnids' syslog reporting: invalid headers, checksums, etc. */
static void on_warning(int type, int err, struct ip *iph, void *data)
{
    (void)type;
    (void)err;
    (void)iph;
    (void)data;
    count.warnings++;
}

/* Without collection no NIDS_DATA arrives: take the totals at the end. */
static void add_totals(struct tcp_stream *stream)
{
    if (!collect) {
        count.client_bytes += stream->server.count;
        count.server_bytes += stream->client.count;
    }
}

static void on_tcp(struct tcp_stream *stream, void **param)
{
    (void)param;
    switch (stream->nids_state) {
    case NIDS_JUST_EST:
        count.conn_starts++;
        if (collect) {
            stream->server.collect++;
            stream->client.collect++;
        } else {
            stream->server.collect_urg++;
            stream->client.collect_urg++;
        }
        break;
    case NIDS_DATA:
        count.client_bytes += stream->server.count_new;
        count.server_bytes += stream->client.count_new;
        break;
    case NIDS_CLOSE:
        count.closes++;
        add_totals(stream);
        break;
    case NIDS_RESET:
        count.resets++;
        add_totals(stream);
        break;
    case NIDS_TIMED_OUT:
        count.timed_out++;
        add_totals(stream);
        break;
    case NIDS_EXITING:
        count.open_at_exit++;
        add_totals(stream);
        break;
    }
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int usage(void)
{
    fputs("usage: nids_flows [--no-collect] [--verify-checksums] FILE.pcap\n", stderr);
    return 2;
}

int main(int argc, char **argv)
{
    static struct nids_chksum_ctl no_checksums = {0, 0, NIDS_DONT_CHKSUM, 0};
    int verify = 0;
    double started, seconds;
    int i;

    for (i = 1; i < argc - 1; i++) {
        if (!strcmp(argv[i], "--no-collect"))
            collect = 0;
        else if (!strcmp(argv[i], "--verify-checksums"))
            verify = 1;
        else
            return usage();
    }
    if (i != argc - 1 || argv[i][0] == '-')
        return usage();

    nids_params.filename = argv[i];
    nids_params.device = NULL;
    nids_params.pcap_filter = NULL;
    nids_params.n_tcp_streams = TCP_STREAMS;
    nids_params.n_hosts = HOSTS;
    nids_params.scan_num_hosts = 0;
    nids_params.syslog = on_warning;
    if (!nids_init()) {
        fprintf(stderr, "nids_init: %s\n", nids_errbuf);
        return 1;
    }
    if (!verify)
        nids_register_chksum_ctl(&no_checksums, 1);
    nids_register_ip_frag(on_ip_frag);
    nids_register_tcp(on_tcp);

    started = now();
    nids_run();
    seconds = now() - started;

    printf("{\"tool\": \"libnids\", \"collect\": %s, \"packets\": %llu, "
           "\"conn_starts\": %llu, \"conn_ends\": %llu, \"closes\": %llu, "
           "\"resets\": %llu, \"timed_out\": %llu, \"open_at_exit\": %llu, "
           "\"client_bytes\": %llu, \"server_bytes\": %llu, "
           "\"warnings\": %llu, \"seconds\": %.6f}\n",
           collect ? "true" : "false", count.packets, count.conn_starts,
           count.closes + count.resets + count.timed_out, count.closes,
           count.resets, count.timed_out, count.open_at_exit,
           count.client_bytes, count.server_bytes, count.warnings, seconds);
    return 0;
}
