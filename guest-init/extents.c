/* Writeback by extent: the host copies a big file's data out of the scratch
 * image, and the guest copies nothing (docs/writeback.md, "Big files").
 *
 * The upper file lives on ext4 on /dev/ubda, and ubda is the scratch image
 * on the host, byte for byte. After FIEMAP with FIEMAP_FLAG_SYNC (which
 * writes the file's dirty pages to ubda first), the extents say where its
 * data lies in that image. The list goes to IO/xcopy (hostfs of the run
 * dir), `XC` asks the host to copy those ranges into the temporary file the
 * guest has just created, and the host answers `x <errno>`. Holes and
 * unwritten extents are not listed, so they stay holes; the host also skips
 * 4 KiB blocks of zeros, as copy_sparse() does. Everything else (conflict
 * check before, mode, times and the atomic rename after) stays the guest's.
 *
 * Whenever anything is unusual (not on ubda, an extent without a stable
 * place, writes the host could not store), the caller copies as before.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "init.h"

#define UBD_MAJOR 98
#define XC_LIST UR_IO "/xcopy"
#define XC_BATCH 256
/* Extents without a place in the image the host could copy from. */
#define XC_UNSTABLE (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | \
		     FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED | \
		     FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_INLINE | \
		     FIEMAP_EXTENT_DATA_TAIL | FIEMAP_EXTENT_MERGED)

static union {
	struct fiemap map;
	char bytes[sizeof(struct fiemap) + XC_BATCH * sizeof(struct fiemap_extent)];
} fm;

/* 1 if the scratch disk (ubda) lost writes or met errors, or if that cannot
 * be known (a kernel without the counter): then the image is not to be
 * trusted and the guest copies from its own page cache. */
int xc_scratch_untrusted(void)
{
	static const char *const counters[] = {
		"/sys/block/ubda/host_write_errors", "/sys/fs/ext4/ubda/errors_count",
	};
	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
		char buf[32];
		int fd = open(counters[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return 1;
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n <= 0)
			return 1;
		buf[n] = '\0';
		if (strtol(buf, NULL, 10) != 0)
			return 1;
	}
	return 0;
}

void xc_put_hex(char *out, const char *s)
{
	static const char digits[] = "0123456789abcdef";
	for (; *s; s++) {
		*out++ = digits[(unsigned char)*s >> 4];
		*out++ = digits[(unsigned char)*s & 15];
	}
	*out = '\0';
}

int xc_list_extents(int in, off_t size, FILE *list, int sync)
{
	__u64 start = 0;
	__u32 flags = sync ? FIEMAP_FLAG_SYNC : 0;
	for (;;) {
		memset(&fm.map, 0, sizeof(fm.map));
		fm.map.fm_start = start;
		fm.map.fm_length = FIEMAP_MAX_OFFSET - start;
		fm.map.fm_flags = flags;
		fm.map.fm_extent_count = XC_BATCH;
		if (ioctl(in, FS_IOC_FIEMAP, &fm.map) < 0)
			return 1;
		flags = 0; /* synced once is enough: nothing else runs */
		if (fm.map.fm_mapped_extents == 0)
			return 0;
		for (__u32 i = 0; i < fm.map.fm_mapped_extents; i++) {
			struct fiemap_extent *e = &fm.map.fm_extents[i];
			if (e->fe_flags & XC_UNSTABLE)
				return 1;
			start = e->fe_logical + e->fe_length;
			__u64 len = e->fe_length;
			if (!(e->fe_flags & FIEMAP_EXTENT_UNWRITTEN) && e->fe_logical < (__u64)size) {
				if (e->fe_logical + len > (__u64)size)
					len = (__u64)size - e->fe_logical;
				fprintf(list, "%llu %llu %llu\n", (unsigned long long)e->fe_logical,
					(unsigned long long)e->fe_physical, (unsigned long long)len);
			}
			if (e->fe_flags & FIEMAP_EXTENT_LAST)
				return 0;
		}
	}
}

int xc_on_scratch(const struct stat *st)
{
	return S_ISREG(st->st_mode) && major(st->st_dev) == UBD_MAJOR && minor(st->st_dev) == 0;
}

int copy_by_host(int in, int out, const char *host_path)
{
	struct stat st;
	if (fstat(in, &st) < 0 || !xc_on_scratch(&st) || strlen(host_path) >= PATH_MAX)
		return 1;
	static char hex[2 * PATH_MAX + 1];
	xc_put_hex(hex, host_path);
	FILE *list = fopen(XC_LIST, "we");
	if (!list)
		return 1;
	fprintf(list, "%s\n%lld\n", hex, (long long)st.st_size);
	int unusual = xc_list_extents(in, st.st_size, list, 1);
	if (fclose(list) != 0 || unusual)
		return 1;
	/* The sync above went to the host through ubda: only if the host
	 * stored every write does the image hold the file. */
	if (xc_scratch_untrusted())
		return 1;
	ctl_say("XC");
	/* The host answers once it copied; it stops the guest itself if that
	 * takes longer than its writeback timeout. */
	char *reply = ctl_wait_line("x ", -1);
	if (!reply) {
		errno = EPIPE;
		return -1;
	}
	int err = atoi(reply + 2);
	if (err != 0) {
		/* Whatever went wrong on the host, the guest's copy is still
		 * there to try (and to report what fails with it). */
		if (ftruncate(out, 0) < 0)
			return -1;
		return 1;
	}
	return ftruncate(out, st.st_size);
}
