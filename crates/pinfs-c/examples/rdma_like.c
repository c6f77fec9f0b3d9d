/*
 * rdma_like.c - what an RDMA application does with pinfs, through the C
 * interface (include/pinfs.h), against a `pinfs serve` daemon:
 *
 *   1. connect, open the file, map it MAP_SHARED_VALIDATE|MAP_DIRECT (the
 *      pool's own memory, in this process: zero-copy; the mapping carries a
 *      layout lease), store a header through the mapping and persist it;
 *   2. register the mapping with the device and stream device writes
 *      through the registration (what a peer's RDMA writes do), while
 *      polling the connection's notification descriptor (the daemon also
 *      sends SIGIO);
 *   3. on a break event, stop the device, deregister, unmap and close,
 *      within lease-break-time, so the breaker (a truncate in another
 *      process) can go ahead; then exit 0.
 *
 * Usage: rdma_like SOCKET PATH [ignore]
 *   With "ignore", the program never looks at its notifications: the daemon
 *   fences it (kills it) at lease-break-time. Either way it gives up (exit
 *   1) after about a minute without a break.
 *
 * Output (one line each, flushed): "mapped PATH", "registered iova 0x...",
 * "ready", then "break target none", "signal SIGIO" (when the signal
 * arrived), "released after N device writes".
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

	/* 1. Map it: MAP_DIRECT needs MAP_SHARED_VALIDATE (SPEC 5.1). */
	const size_t len = 64 << 10;
	void *addr = NULL;
	int64_t map = pinfs_mmap(c, fd, 0, len, PROT_READ | PROT_WRITE,
				 PINFS_MAP_SHARED_VALIDATE | PINFS_MAP_DIRECT, &addr);
	if (map < 0)
		return fail("mmap", map);
	/* A store straight to the media, made durable without fsync. */
	volatile unsigned char *mem = addr;
	for (int i = 0; i < 16; i++)
		mem[i] = 0xa5;
	rc = pinfs_persist(c, (uint64_t)map, 0, 16);
	if (rc < 0)
		return fail("persist", rc);
	say("mapped %s\n", argv[2], 0);

	/* 2. Register it with the device (revocable: invalidated at
	 * lease-break-time if we do not deregister). */
	pinfs_mr_keys keys;
	int64_t reg = pinfs_register(c, (uint64_t)map, 0, len, PINFS_REVOKE_INVALIDATE, &keys);
	if (reg < 0)
		return fail("register", reg);
	printf("registered iova 0x%llx\n", (unsigned long long)keys.iova);
	fflush(stdout);

	unsigned char block[4096];
	memset(block, 0x5a, sizeof(block));
	struct pollfd pfd = { .fd = pinfs_notify_fd(c), .events = POLLIN };
	if (pfd.fd < 0)
		return fail("notify fd", pfd.fd);
	say("ready\n", NULL, 0);

	long writes = 0;
	/* A demo, not a service: it gives up after about a minute without a
	 * break (so a test that expects one fails instead of hanging). */
	for (long round = 0;; round++) {
		if (round >= 6000)
			return fail(ignore ? "still alive (not fenced)" : "waiting for a break", -ETIMEDOUT);
		if (ignore) {
			/* Keeps its device busy, never reads a notification:
			 * fenced. */
			sleep_ms(10);
			continue;
		}
		/* The device writes one block per round (at 4 KiB, past the
		 * header) while nothing is asked of us. */
		rc = pinfs_dma_write(c, (uint64_t)reg, 4096, block, sizeof(block));
		if (rc < 0)
			return fail("dma write", rc);
		if (rc != PINFS_DMA_OK)
			return fail("dma write completion", -EIO);
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
		printf("break target %s\n", ev.target == F_UNLCK ? "none" : "read");
		/* 3. Quiesce the device, give everything back: the breaker
		 * proceeds. */
		rc = pinfs_deregister(c, (uint64_t)reg);
		if (rc < 0)
			return fail("deregister", rc);
		rc = pinfs_munmap(c, (uint64_t)map);
		if (rc < 0)
			return fail("munmap", rc);
		rc = pinfs_close(c, fd);
		if (rc < 0)
			return fail("close", rc);
		break;
	}
	/* The signal was sent with the event; give its delivery a moment. */
	for (int i = 0; i < 200 && !got_sigio; i++)
		sleep_ms(10);
	if (got_sigio)
		say("signal SIGIO\n", NULL, 0);
	say("released after %ld device writes\n", NULL, writes);
	pinfs_disconnect(c);
	return 0;
}
