/* Copying file data with holes kept as holes.
 *
 * Only the source's data extents are read (SEEK_DATA/SEEK_HOLE; a source
 * without them, like hostfs, is one extent), and within them blocks of
 * zeros are skipped too: a loop-mounted ext4 image has its inode tables
 * and journal zeroed in place, which SEEK_DATA calls data. Every byte that
 * is not written reads back as zero, because the target is new (or
 * truncated to 0) and gets its final size last. So the copy is
 * byte-identical and the target allocates at most what the source did.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "init.h"

#define COPY_CHUNK (1 << 20)
#define BLOCK 4096

static char copy_buf[COPY_CHUNK];
static const char zero_block[BLOCK];

static int is_zero(const char *p, size_t n)
{
	return !memcmp(p, zero_block, n);
}

static int write_at(int out, const char *buf, size_t len, off_t at)
{
	while (len > 0) {
		ssize_t m = pwrite(out, buf, len, at);
		if (m < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += m;
		len -= (size_t)m;
		at += m;
	}
	return 0;
}

/* Write the non-zero blocks of buf[0..n), which lies at offset `at`. */
static int write_nonzero(int out, const char *buf, size_t n, off_t at)
{
	size_t run = 0, start = 0;
	for (size_t off = 0; off < n; off += BLOCK) {
		size_t len = n - off < BLOCK ? n - off : BLOCK;
		if (!is_zero(buf + off, len)) {
			if (run == 0)
				start = off;
			run += len;
			continue;
		}
		if (run && write_at(out, buf + start, run, at + (off_t)start) < 0)
			return -1;
		run = 0;
	}
	if (run && write_at(out, buf + start, run, at + (off_t)start) < 0)
		return -1;
	/* hostfs writes through: the guest's copy of the pages is useless. */
	forget_written(out, at, (off_t)n);
	return 0;
}

/* Copy [from, to) of `in` to the same offsets of `out`. */
static int copy_extent(int in, int out, off_t from, off_t to)
{
	while (from < to) {
		size_t want = to - from < COPY_CHUNK ? (size_t)(to - from) : COPY_CHUNK;
		ssize_t n = pread(in, copy_buf, want, from);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			return 0; /* shrank under us: the final size says the rest */
		if (write_nonzero(out, copy_buf, (size_t)n, from) < 0)
			return -1;
		from += n;
	}
	return 0;
}

int copy_sparse(int in, int out)
{
	struct stat st;
	if (fstat(in, &st) < 0)
		return -1;
	off_t size = st.st_size, pos = 0;
	while (pos < size) {
		off_t data = lseek(in, pos, SEEK_DATA);
		if (data < 0) {
			if (errno == ENXIO)
				break; /* a hole up to the end */
			if (errno != EINVAL && errno != EOPNOTSUPP)
				return -1;
			data = pos; /* no hole information: all of it is data */
		}
		off_t hole = lseek(in, data, SEEK_HOLE);
		if (hole <= data || hole > size)
			hole = size;
		if (copy_extent(in, out, data, hole) < 0)
			return -1;
		pos = hole;
	}
	return ftruncate(out, size);
}

void forget_written(int fd, off_t from, off_t len)
{
	posix_fadvise(fd, from, len, POSIX_FADV_DONTNEED);
}
