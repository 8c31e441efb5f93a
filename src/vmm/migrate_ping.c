/* Heartbeats on the migration control connection (migrate.h).
 *
 * TCP keepalive notices a peer whose machine vanished, but not one whose
 * process is stopped (SIGSTOP) or stuck: its kernel still answers. So the
 * side that is waited on says PING every MIG_PING_MS, and the side that
 * waits gives up (or, where giving up would lose the VM, warns) after
 * MIG_SILENCE_MS with nothing at all. A ping is only written when the socket
 * has room (POLLOUT: for TCP that is far more than one message), so a peer
 * that stopped reading cannot block the pinger, nor whoever shares its lock. */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "migrate.h"

static void *pinger_main(void *arg)
{
	struct mig_pinger *p = arg;
	struct pollfd pf[2] = {{.fd = p->efd, .events = POLLIN}, {.fd = p->fd, .events = POLLOUT}};

	for (;;) {
		int n = poll(pf, 1, MIG_PING_MS);

		if (n < 0 && errno == EINTR)
			continue;
		if (n != 0)
			return NULL; /* stopped (or the eventfd broke: stop too) */
		if (p->lock)
			pthread_mutex_lock(p->lock);
		int r = poll(&pf[1], 1, 0) == 1 && (pf[1].revents & POLLOUT)
		            ? mig_send_msg(p->fd, MIG_PING, NULL, NULL)
		            : 0;
		if (p->lock)
			pthread_mutex_unlock(p->lock);
		if (r < 0)
			return NULL; /* the peer is gone: the side that reads will say so */
	}
}

int mig_pinger_start(struct mig_pinger *p, int fd, pthread_mutex_t *lock)
{
	int r;

	p->fd = fd;
	p->lock = lock;
	p->started = false;
	p->efd = eventfd(0, EFD_CLOEXEC);
	if (p->efd < 0)
		return -errno;
	if ((r = -pthread_create(&p->th, NULL, pinger_main, p)) < 0) {
		close(p->efd);
		p->efd = -1;
		return r;
	}
	p->started = true;
	return 0;
}

void mig_pinger_stop(struct mig_pinger *p)
{
	uint64_t one = 1;

	if (!p->started)
		return;
	if (write(p->efd, &one, sizeof(one)) < 0)
		(void)0; /* a fresh eventfd cannot be full */
	pthread_join(p->th, NULL);
	close(p->efd);
	p->efd = -1;
	p->started = false;
}

int mig_recv_next(int fd, struct mig_msg *m, char *why, size_t whylen)
{
	int r;

	do
		r = mig_recv_msg(fd, m, MIG_SILENCE_MS, why, whylen);
	while (r == 0 && m->kind == MIG_PING);
	return r;
}
