/* Writeback in batches: the host creates small new files itself.
 *
 * Written back through hostfs, a small new file costs about 40 host system
 * calls made one by one from the UML kernel (lookups of the temporary name
 * and the target, create, write, chmod, utimes, rename: docs/writeback.md).
 * So writeback lists such files (host path, size, mode, mtime, and the data
 * itself up to 16 KiB; beyond that, where it lies in the scratch image,
 * which FIEMAP says after one syncfs of the scratch disk), and the mode and
 * times of the dirs holding them (after their files, so that the files'
 * creation does not change the dir's mtime afterwards), in IO/xbatch.<k>;
 * `XB <k>` asks
 * the host to apply list k in order (hostbatch.py), and the host answers
 * `x <errno> <lines>`: 0 and the number of lines of IO/xbatch.<k>.result
 * ("<index> M" for a file or dir without the setid bits the host refused,
 * "<index> F <step> <errno>" for one the host could not write), or an errno
 * and the guest writes the whole batch itself, as before.
 *
 * The guest does not wait for the answer: it goes on walking and listing
 * the next batch while the host applies this one (two cores at work, not
 * one after the other), and collects the answer before it sends the next
 * batch, before anything else that waits for a line from the host (a big
 * file's `XC`), and at the end of each scope. Each batch has its own file
 * names: hostfs would serve a reread file from its cache.
 *
 * The rules stay the guest's (writeback.c): it has checked for conflicts,
 * and it decides what goes; the host writes each file under a temporary
 * name and renames it over the target, as the guest does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "init.h"

#define XB_MAX 2048
#define XB_POOL (1 << 20)
#define XB_INLINE_MAX (16 << 10)

struct batch {
	struct {
		unsigned path; /* offset into pool */
		int is_dir;
		struct stat st;
	} entries[XB_MAX];
	int n;
	char pool[XB_POOL];
	size_t pool_len;
	unsigned long number;
};

static struct batch batches[2];
static struct batch *building = &batches[0]; /* being listed */
static struct batch *with_host;              /* sent, its answer not yet read */
static unsigned long next_number = 1;
static FILE *list;
static int synced;
static char hex[2 * PATH_MAX + 1];

int xb_pending(void)
{
	return building->n + (with_host ? with_host->n : 0);
}

static void batch_path(char *buf, size_t size, unsigned long number, const char *suffix)
{
	snprintf(buf, size, UR_IO "/xbatch.%lu%s", number, suffix);
}

/* Room for one more entry named `path` (sending the batch if it is full),
 * and the list open. */
static int make_room(const char *path, xb_done_fn *done, void *ctx)
{
	size_t n = strlen(path) + 1;
	if (n > PATH_MAX)
		return -1;
	if (building->n == XB_MAX || building->pool_len + n > sizeof(building->pool))
		xb_send(done, ctx);
	if (!list) {
		char name[64];
		building->number = next_number++;
		batch_path(name, sizeof(name), building->number, "");
		list = fopen(name, "we");
		if (!list)
			return -1;
		/* Large writes: each one is a host call through hostfs. */
		setvbuf(list, NULL, _IOFBF, 1 << 16);
	}
	return 0;
}

static void remember(const char *path, const struct stat *st, int is_dir)
{
	struct batch *b = building;
	size_t n = strlen(path) + 1;
	memcpy(b->pool + b->pool_len, path, n);
	b->entries[b->n].path = (unsigned)b->pool_len;
	b->entries[b->n].is_dir = is_dir;
	b->entries[b->n].st = *st;
	b->pool_len += n;
	b->n++;
}
/* A small file goes with its data: reading it costs the guest less than
 * syncing the scratch disk and asking FIEMAP, and the host reads nothing. */
static int list_inline(int in, const char *path, const struct stat *st, xb_done_fn *done,
		       void *ctx)
{
	static char data[XB_INLINE_MAX + 1];
	size_t got = 0;
	for (ssize_t n; got < sizeof(data); got += (size_t)n) {
		n = read(in, data + got, sizeof(data) - got);
		if (n < 0)
			return 1;
		if (n == 0)
			break;
	}
	if (got != (size_t)st->st_size || make_room(path, done, ctx) < 0)
		return 1;
	xc_put_hex(hex, path);
	fprintf(list, "C %s %lld %u %lld %ld\n", hex, (long long)st->st_size,
		(unsigned)(st->st_mode & 07777), (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
	fwrite(data, 1, got, list);
	fputc('\n', list);
	return 0;
}

/* A bigger one: where its data lies in the scratch image. */
static int list_extents(int in, const char *path, const struct stat *st, xb_done_fn *done,
			void *ctx)
{
	if (!xc_on_scratch(st) || make_room(path, done, ctx) < 0)
		return 1;
	/* Once per writeback: CMD has exited, so nothing writes the upper
	 * layer's data any more, and FIEMAP needs no sync per file. On a
	 * throwaway scratch (nobarrier) this is no host fsync. */
	if (!synced && syncfs(in) < 0)
		return 1;
	synced = 1;
	/* The extents go to a memory buffer first: an unusual one means the
	 * caller writes this file, and the list must not hold half of it. */
	char *text = NULL;
	size_t text_len = 0;
	FILE *extents = open_memstream(&text, &text_len);
	int unusual = !extents || xc_list_extents(in, st->st_size, extents, 0) != 0;
	if (extents && fclose(extents) != 0)
		unusual = 1;
	if (unusual) {
		free(text);
		return 1;
	}
	unsigned lines = 0;
	for (size_t i = 0; i < text_len; i++)
		lines += text[i] == '\n';
	xc_put_hex(hex, path);
	fprintf(list, "F %s %lld %u %lld %ld %u\n%s", hex, (long long)st->st_size,
		(unsigned)(st->st_mode & 07777), (long long)st->st_mtim.tv_sec,
		st->st_mtim.tv_nsec, lines, text);
	free(text);
	return 0;
}

int xb_add_file(const char *path, const char *upper, const struct stat *st, xb_done_fn *done,
		void *ctx)
{
	/* Open before make_room(): sending a full batch reports its outcomes,
	 * and handling them may reuse the buffer `upper` points into. */
	int in = open(upper, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (in < 0)
		return 1;
	int listed = st->st_size <= XB_INLINE_MAX ? list_inline(in, path, st, done, ctx)
						  : list_extents(in, path, st, done, ctx);
	close(in);
	if (listed == 0)
		remember(path, st, 0);
	return listed;
}

int xb_add_dir(const char *path, const struct stat *st, int set_mode, xb_done_fn *done,
	       void *ctx)
{
	if (make_room(path, done, ctx) < 0)
		return 1;
	xc_put_hex(hex, path);
	if (set_mode)
		fprintf(list, "D %s %u %lld %ld\n", hex, (unsigned)(st->st_mode & 07777),
			(long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
	else
		fprintf(list, "D %s - %lld %ld\n", hex, (long long)st->st_mtim.tv_sec,
			st->st_mtim.tv_nsec);
	remember(path, st, 1);
	return 0;
}

/* The host's answer to `b`: the outcome of each entry in `outcomes` (and
 * the failed ones' step and errno), or -1: write them all yourself. */
static int host_answer(const struct batch *b, enum xb_outcome *outcomes, int *errs,
		       char (*steps)[32])
{
	char *reply = ctl_wait_line("x ", -1);
	if (!reply)
		return -1;
	int err = 0;
	unsigned lines = 0;
	if (sscanf(reply + 2, "%d %u", &err, &lines) < 1 || err != 0)
		return -1;
	for (int i = 0; i < b->n; i++)
		outcomes[i] = XB_WRITTEN;
	if (lines == 0)
		return 0;
	char name[64];
	batch_path(name, sizeof(name), b->number, ".result");
	FILE *result = fopen(name, "re");
	if (!result)
		return -1;
	char line[128], step[32];
	int index, e;
	while (fgets(line, sizeof(line), result)) {
		char kind;
		if (sscanf(line, "%d %c", &index, &kind) != 2 || index < 0 || index >= b->n)
			continue;
		if (kind == 'M') {
			outcomes[index] = XB_MODEBITS;
		} else if (kind == 'F' && sscanf(line, "%*d %*c %31s %d", step, &e) == 2) {
			outcomes[index] = XB_FAILED;
			errs[index] = e;
			memcpy(steps[index], step, sizeof(step));
		}
	}
	fclose(result);
	unlink(name);
	return 0;
}

/* Wait for the batch with the host, and report each entry's outcome. */
static void collect(xb_done_fn *done, void *ctx)
{
	static enum xb_outcome outcomes[XB_MAX];
	static int errs[XB_MAX];
	static char steps[XB_MAX][32];
	struct batch *b = with_host;
	if (!b)
		return;
	if (b->n > 0 && host_answer(b, outcomes, errs, steps) < 0) {
		for (int i = 0; i < b->n; i++)
			outcomes[i] = XB_YOURS;
	}
	/* `done` may write files itself (XB_YOURS), never batch them. */
	with_host = NULL;
	for (int i = 0; i < b->n; i++)
		done(ctx, b->pool + b->entries[i].path, &b->entries[i].st, b->entries[i].is_dir,
		     outcomes[i], outcomes[i] == XB_FAILED ? steps[i] : NULL, errs[i]);
	b->n = 0;
	b->pool_len = 0;
}

void xb_send(xb_done_fn *done, void *ctx)
{
	collect(done, ctx);
	if (!list)
		return;
	struct batch *b = building;
	building = b == &batches[0] ? &batches[1] : &batches[0];
	with_host = b;
	int listed = fclose(list);
	list = NULL;
	/* The syncfs went to the host through ubda: only if the host stored
	 * every write does the image hold the files. Else `n = 0` tells
	 * collect() not to wait for an answer. */
	if (listed != 0 || xc_scratch_untrusted()) {
		for (int i = 0; i < b->n; i++)
			done(ctx, b->pool + b->entries[i].path, &b->entries[i].st,
			     b->entries[i].is_dir, XB_YOURS, NULL, 0);
		b->n = 0;
		b->pool_len = 0;
		with_host = NULL;
		return;
	}
	ctl_say("XB %lu", b->number);
}

void xb_finish(xb_done_fn *done, void *ctx)
{
	xb_send(done, ctx);
	collect(done, ctx);
	synced = 0;
}
