/*
 * rdma_like.c - what an RDMA application does with pinfs, through the C
 * interface (include/pinfs.h), against a `pinfs serve` daemon:
 *
 *   1. connect, open the file, and take a layout lease on it (the promise
 *      that nobody changes its layout without telling us first);
 *   2. "stream device writes" into the file while polling the connection's
 *      notification descriptor (the daemon also sends SIGIO);
 *   3. on a break event, stop the writes, release the lease and close the
 *      file, within lease-break-time, so the breaker (a truncate in another
 *      process) can go ahead; then exit 0.
 *
 * Until mappings in client processes land, step 1 is the layout lease alone
 * (no MAP_DIRECT mapping, no registration) and the device writes are pwrites.
 *
 * Usage: rdma_like SOCKET PATH [ignore]
 *   With "ignore", the program never looks at its notifications: the daemon
 *   fences it (kills it) at lease-break-time.
 *
 * Output (one line each, flushed): "leased PATH", "ready", then
 * "break fd N target none", "signal SIGIO" (when the signal arrived),
 * "released after N writes".
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pinfs.h"

static volatile sig_atomic_t got_sigio;

static void on_sigio(int sig)
{
	(void)sig;
	got_sigio = 1;
}

static int fail(const char *what, long rc)
{
	fprintf(stderr, "rdma_like: %s: %s\n", what, strerror((int)-rc));
	return 1;
}

static void say(const char *fmt, const char *arg, long n)
{
	if (arg)
		printf(fmt, arg);
	else
		printf(fmt, n);
	fflush(stdout);
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "ignore") != 0)) {
		fprintf(stderr, "usage: rdma_like SOCKET PATH [ignore]\n");
		return 2;
	}
	int ignore = argc == 4;

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigio;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGIO, &sa, NULL) != 0)
		return fail("sigaction", -errno);

	pinfs_client *c = NULL;
	int rc = pinfs_connect(argv[1], -1 /* SIGIO */, &c);
	if (rc < 0)
		return fail("connect", rc);
	int fd = pinfs_open(c, argv[2], O_RDWR, 0);
	if (fd < 0)
		return fail("open", fd);
	rc = pinfs_setlease(c, fd, F_RDLCK | F_LAYOUT);
	if (rc < 0)
		return fail("setlease", rc);
	if (pinfs_getlease(c, fd) != F_UNLCK) /* a layout lease is no open lease */
		return fail("getlease", -EPROTO);
	say("leased %s\n", argv[2], 0);

	char block[4096];
	memset(block, 0x5a, sizeof(block));
	struct pollfd pfd = { .fd = pinfs_notify_fd(c), .events = POLLIN };
	if (pfd.fd < 0)
		return fail("notify fd", pfd.fd);
	say("ready\n", NULL, 0);

	long writes = 0;
	for (;;) {
		if (ignore) {
			/* Keeps "writing", never reads a notification: fenced. */
			sleep_ms(10);
			continue;
		}
		/* The "device" writes one block per round while nothing is
		 * asked of us. */
		int64_t n = pinfs_pwrite(c, fd, block, sizeof(block), 0);
		if (n < 0)
			return fail("pwrite", n);
		writes++;
		int ready = poll(&pfd, 1, 10);
		if (ready < 0 && errno == EINTR)
			continue; /* SIGIO interrupted the poll: look again */
		if (ready < 0)
			return fail("poll", -errno);
		if (ready == 0)
			continue;
		pinfs_event ev;
		rc = pinfs_next_event(c, &ev);
		if (rc < 0)
			return fail("next event", rc);
		if (rc == 0 || ev.kind != PINFS_EVENT_BREAK)
			continue;
		printf("break fd %d target %s\n", ev.fd, ev.target == F_UNLCK ? "none" : "read");
		/* Stop the device, give the lease back, close: the breaker
		 * proceeds. */
		rc = pinfs_setlease(c, ev.fd, F_UNLCK | F_LAYOUT);
		if (rc < 0)
			return fail("release", rc);
		rc = pinfs_close(c, ev.fd);
		if (rc < 0)
			return fail("close", rc);
		break;
	}
	/* The signal was sent with the event; give its delivery a moment. */
	for (int i = 0; i < 200 && !got_sigio; i++)
		sleep_ms(10);
	if (got_sigio)
		say("signal SIGIO\n", NULL, 0);
	say("released after %ld writes\n", NULL, writes);
	pinfs_disconnect(c);
	return 0;
}
