/* Directory iteration for the init's tree walks: getdents64 into a fixed
 * buffer (no allocation, one syscall per batch of entries: each guest
 * syscall costs 20-40 us under UML). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "init.h"

int dir_open(struct dir_iter *it, const char *path)
{
	it->fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	it->error = 0;
	it->ended = 0;
	it->len = it->off = 0;
	return it->fd < 0 ? -1 : 0;
}

struct dirent64 *dir_next(struct dir_iter *it)
{
	while (!it->ended) {
		while (it->off < it->len) {
			struct dirent64 *d = (struct dirent64 *)(it->buf + it->off);
			it->off += d->d_reclen;
			if (strcmp(d->d_name, ".") != 0 && strcmp(d->d_name, "..") != 0)
				return d;
		}
		/* ext4 fills the buffer unless the directory ended: spare a call. */
		if (it->short_batch_ends && it->len > 0 && it->len < (long)sizeof(it->buf) - 512)
			break;
		long n = syscall(SYS_getdents64, it->fd, it->buf, sizeof(it->buf));
		if (n < 0)
			it->error = errno;
		if (n <= 0)
			break;
		it->len = n;
		it->off = 0;
	}
	it->ended = 1;
	return NULL;
}

void dir_close(struct dir_iter *it)
{
	if (it->fd >= 0)
		close(it->fd);
	it->fd = -1;
}
