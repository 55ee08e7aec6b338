/* Messages and the control channel: the unit every other one reports
 * through. The kernel log (/dev/kmsg) reaches the host's run log; the
 * control channel (CTL_TTY, a UML console in raw mode) carries the protocol
 * lines described in init.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/reboot.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "init.h"

#define CTL_TTY "/dev/tty1"

static int ctl_fd = -1;
static int kmsg_fd = -1;
/* Bytes from the host not yet handled (lines may span reads, and one read
 * may hold `r N` and the new command's first lines). */
static char ctl_in[1024];
static size_t ctl_in_len;
static char ctl_line[256];

int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

void klog(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n = snprintf(line, sizeof(line), "umlroot-init: ");
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(line))
		n = sizeof(line) - 1;
	if (kmsg_fd >= 0)
		write_all(kmsg_fd, line, (size_t)n);
}

void ctl_say(const char *fmt, ...)
{
	char line[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	if (ctl_fd >= 0)
		write_all(ctl_fd, line, (size_t)n);
}

__attribute__((noreturn)) void power_off(void)
{
	sync();
	for (;;) {
		reboot(RB_POWER_OFF);
		/* Never return: PID 1 exiting panics the kernel. */
		sleep(1);
	}
}

__attribute__((noreturn)) void fail(const char *step, int err)
{
	klog("%s: %s\n", step, strerror(err));
	ctl_say("ERR %s: %s", step, strerror(err));
	power_off();
}

void ctl_open(void)
{
	kmsg_fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	ctl_fd = open(CTL_TTY, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (ctl_fd < 0)
		fail("open control channel " CTL_TTY, errno);
	/* Raw mode: no echo, no CR/LF translation, byte-at-a-time reads. */
	struct termios t;
	if (tcgetattr(ctl_fd, &t) == 0) {
		cfmakeraw(&t);
		tcsetattr(ctl_fd, TCSANOW, &t);
	}
}

int ctl_poll_fd(void)
{
	return ctl_fd;
}

long clock_ms(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* The next complete line already received, or NULL. */
static char *ctl_next_line(void)
{
	char *nl = memchr(ctl_in, '\n', ctl_in_len);
	size_t len = nl ? (size_t)(nl - ctl_in) : ctl_in_len;
	if (!nl && len < sizeof(ctl_line) - 1)
		return NULL;
	if (len > sizeof(ctl_line) - 1)
		len = sizeof(ctl_line) - 1; /* too long for any message: cut */
	memcpy(ctl_line, ctl_in, len);
	ctl_line[len] = '\0';
	size_t used = nl ? (size_t)(nl - ctl_in) + 1 : len;
	memmove(ctl_in, ctl_in + used, ctl_in_len - used);
	ctl_in_len -= used;
	return ctl_line;
}

/* Hand each line already received to handle(). A handler may run a whole
 * command (`r`), which takes the lines meant for it from the same buffer. */
void ctl_dispatch(ctl_handler *handle, void *ctx)
{
	char *line;
	while ((line = ctl_next_line()) != NULL)
		handle(line, ctx);
}

/* Read what the host sent and dispatch it. Returns -1 when the channel is
 * gone (the host closed it: nothing left to do). */
int ctl_read(ctl_handler *handle, void *ctx)
{
	ssize_t got = read(ctl_fd, ctl_in + ctl_in_len, sizeof(ctl_in) - ctl_in_len);
	if (got < 0)
		return errno == EINTR || errno == EAGAIN ? 0 : -1;
	if (got == 0)
		return -1;
	ctl_in_len += (size_t)got;
	ctl_dispatch(handle, ctx);
	return 0;
}

char *ctl_wait_line(const char *prefix, int timeout_ms)
{
	size_t plen = strlen(prefix);
	long deadline = clock_ms(CLOCK_MONOTONIC) + timeout_ms;
	for (;;) {
		char *line;
		while ((line = ctl_next_line()) != NULL)
			if (!strncmp(line, prefix, plen))
				return line;
		int wait = -1;
		if (timeout_ms >= 0) {
			long left = deadline - clock_ms(CLOCK_MONOTONIC);
			if (left <= 0)
				return NULL;
			wait = (int)left;
		}
		struct pollfd p = {.fd = ctl_fd, .events = POLLIN};
		int r = poll(&p, 1, wait);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return NULL;
		ssize_t got = read(ctl_fd, ctl_in + ctl_in_len, sizeof(ctl_in) - ctl_in_len);
		if (got < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (got <= 0)
			return NULL;
		ctl_in_len += (size_t)got;
	}
}
