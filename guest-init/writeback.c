/* Writeback: after CMD exits, apply what changed under each writeback scope
 * to the host.
 *
 * The list of changes is the overlay's upper layer (never a walk of the
 * whole scope). For each scope, a fresh hostfs mount of just that host
 * directory goes on UR_WB, so nothing outside it can be written and its
 * attributes are current (hostfs never revalidates a cached inode).
 *
 * Per upper entry (abs path P, host path H = UR_WB + P - scope):
 *   whiteout (char 0:0)     deleted on the host, in the last phase
 *   dir                     created if missing; renamed dirs
 *                           (trusted.overlay.redirect) are copied whole
 *                           from the merged view; for them, for opaque
 *                           dirs and for every dir below one of those,
 *                           host entries they no longer hold are removed
 *                           in the last phase
 *   regular file            unchanged against the lower (mode, size, mtime)
 *                           -> nothing; metacopy (data still in the lower
 *                           at the same path) -> chmod/utimes only; else
 *                           data copied (sparse, copy.c) to a temporary
 *                           name, then renamed; a new small file in the
 *                           upper layer is listed for the host to create
 *                           (hostbatch.c), and so are the mode and times
 *                           of the dirs holding such files
 *   symlink, FIFO           created under a temporary name, then renamed
 *   device, socket, xattrs, owners other than root/the user: counted and
 *                           named in the report, never written
 * A host path whose ctime is >= the guest's start (or the end of its last
 * writeback) changed on the host meanwhile: it is left alone and reported
 * as a conflict.
 * Deletions come last: a renamed file's data is read from its old place.
 *
 * Report: IO/writeback.report, lines "<kind>\t[<detail>\t]<path>" (kinds:
 * conflict, outside, owner, device, socket, xattr, modebits, failed, denied;
 * detail for owner "uid:gid", for failed and denied "step: error"), paths with '\\' and
 * newline escaped as \\ and \n. Without --verbose each kind is capped at
 * REPORT_CAP lines. With --state, written entries are marked in the upper
 * layer (UR_HOST_MARK, see state.c).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "init.h"

#define UR_MERGED UR_DIR "/merged" /* the overlay alone, without submounts */
#define REPORT_PATH UR_IO "/writeback.report"
#define REPORT_CAP 20
#define MAX_DEPTH 200
#define XATTR_LIST 4096
#define OVL_PREFIX "trusted.overlay."
#define DELETIONS_SIZE (4 << 20)
#define LINKS_SLOTS 8192
#define LINKS_POOL (1 << 20)

enum kind { K_CONFLICT, K_OUTSIDE, K_OWNER, K_DEVICE, K_SOCKET, K_XATTR, K_MODEBITS,
	    K_FAILED, K_DENIED, K_COUNT };
static const char *const kind_names[K_COUNT] = {
	"conflict", "outside", "owner", "device", "socket", "xattr", "modebits", "failed",
	"denied",
};

/* What llistxattr says about an upper entry. */
struct ovl_attrs {
	int metacopy, opaque, redirect, other;
};

struct wb {
	const struct machine_request *req;
	struct wb_summary *sum;
	const char *scope; /* abs path, host == guest */
	size_t scope_len;
	char path[PATH_MAX]; /* abs path of the current entry */
	size_t len;
	unsigned long tmp_serial;
	unsigned reported[K_COUNT];
	int fresh; /* the current dir was made by this writeback: the host has nothing in it */
	int hidden; /* under an opaque or renamed dir: the lower at the same path does
		     * not show through, so a dir's upper entries are all it holds */
};

static char report_buf[1 << 16];
static size_t report_len;
static int report_fd = -1;
static char deletions[DELETIONS_SIZE]; /* "w<path>\0", "p<path>\0" or "u<path>\0" */
static size_t deletions_len;
static struct {
	dev_t dev;
	ino_t ino;
	unsigned off; /* into links_pool, +1 (0 = empty slot) */
} links[LINKS_SLOTS];
static char links_pool[LINKS_POOL];
static size_t links_pool_len;

/* ---- paths ------------------------------------------------------------------ */

static char pbuf_upper[PATH_MAX + 64], pbuf_lower[PATH_MAX + 64];
static char pbuf_merged[PATH_MAX + 64], pbuf_host[PATH_MAX + 64];

static const char *join(char *buf, const char *root, const char *path)
{
	snprintf(buf, PATH_MAX + 64, "%s%s", root, path);
	return buf;
}

static const char *upper_of(const char *p) { return join(pbuf_upper, UR_SCRATCH "/upper", p); }
static const char *lower_of(const char *p) { return join(pbuf_lower, UR_LOWER, p); }
static const char *merged_of(const char *p) { return join(pbuf_merged, UR_MERGED, p); }

static const char *host_of(const struct wb *w, const char *p)
{
	return join(pbuf_host, UR_WB, p + w->scope_len);
}

/* Append "/name" to w->path; returns the old length (for path_pop). */
static int path_push(struct wb *w, const char *name, size_t *old)
{
	size_t n = strlen(name);
	*old = w->len;
	if (w->len + 1 + n >= sizeof(w->path))
		return -1;
	if (w->len == 1 && w->path[0] == '/')
		w->len = 0; /* the root: no "//" */
	w->path[w->len++] = '/';
	memcpy(w->path + w->len, name, n + 1);
	w->len += n;
	return 0;
}

static void path_pop(struct wb *w, size_t old)
{
	w->len = old;
	w->path[old] = '\0';
	if (old == 0) {
		w->path[0] = '/';
		w->path[1] = '\0';
		w->len = 1;
	}
}

static int is_under(const char *path, const char *top, size_t top_len)
{
	if (strncmp(path, top, top_len))
		return 0;
	return path[top_len] == '\0' || path[top_len] == '/' || (top_len == 1 && top[0] == '/');
}

/* ---- report ------------------------------------------------------------------- */

static void report_flush(void)
{
	if (report_len == 0)
		return;
	if (report_fd < 0)
		report_fd = open(REPORT_PATH, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (report_fd >= 0 && write(report_fd, report_buf, report_len) < 0)
		klog("write %s: %s\n", REPORT_PATH, strerror(errno));
	report_len = 0;
}

static void report_put(char c)
{
	if (report_len == sizeof(report_buf))
		report_flush();
	report_buf[report_len++] = c;
}

/* One report line; `detail` (may be NULL) goes before the path. */
static void report(struct wb *w, enum kind k, const char *detail, const char *path)
{
	if (!w->req->verbose && w->reported[k] >= REPORT_CAP)
		return;
	w->reported[k]++;
	for (const char *s = kind_names[k]; *s; s++)
		report_put(*s);
	report_put('\t');
	if (detail) {
		for (const char *s = detail; *s; s++)
			report_put(*s);
		report_put('\t');
	}
	for (const char *s = path; *s; s++) {
		if (*s == '\\' || *s == '\n') {
			report_put('\\');
			report_put(*s == '\n' ? 'n' : '\\');
		} else {
			report_put(*s);
		}
	}
	report_put('\n');
}

static void failed(struct wb *w, const char *step, int err, const char *path)
{
	char detail[256];
	snprintf(detail, sizeof(detail), "%s: %s", step, strerror(err));
	klog("writeback %s %s: %s\n", step, path, strerror(err));
	if (err == EACCES || err == EPERM || err == EROFS) {
		/* The host does not let the user do this (a path outside what
		 * they own, with scope /): kept inside, like fakeroot's EACCES. */
		w->sum->denied++;
		report(w, K_DENIED, detail, path);
		return;
	}
	w->sum->failed++;
	report(w, K_FAILED, detail, path);
}

/* ---- inspecting entries --------------------------------------------------------- */

static int read_ovl_attrs(const char *path, struct ovl_attrs *a)
{
	char names[XATTR_LIST];
	memset(a, 0, sizeof(*a));
	ssize_t n = llistxattr(path, names, sizeof(names));
	if (n < 0)
		return errno == ENOTSUP ? 0 : -1;
	for (char *name = names; name < names + n; name += strlen(name) + 1) {
		if (!strcmp(name, UR_HOST_MARK))
			continue;
		if (strncmp(name, OVL_PREFIX, strlen(OVL_PREFIX))) {
			a->other = 1;
			continue;
		}
		const char *what = name + strlen(OVL_PREFIX);
		if (!strcmp(what, "metacopy")) {
			a->metacopy = 1;
		} else if (!strcmp(what, "opaque")) {
			char v = 0;
			if (lgetxattr(path, name, &v, 1) == 1 && v == 'y')
				a->opaque = 1;
		} else if (!strcmp(what, "redirect")) {
			a->redirect = 1; /* renamed: the lower data is elsewhere */
		}
	}
	return 0;
}

static int is_whiteout(const struct stat *st)
{
	return S_ISCHR(st->st_mode) && st->st_rdev == makedev(0, 0);
}

static int same_time(const struct timespec *a, const struct timespec *b)
{
	/* hostfs sets times with microsecond precision. */
	return a->tv_sec == b->tv_sec && a->tv_nsec / 1000 == b->tv_nsec / 1000;
}

/* Changed on the host since the run started: keep the host's version. */
static int conflicts(struct wb *w, const struct stat *host)
{
	const struct timespec *t0 = &w->req->wb_since;
	if (host->st_ctim.tv_sec > t0->tv_sec ||
	    (host->st_ctim.tv_sec == t0->tv_sec && host->st_ctim.tv_nsec >= t0->tv_nsec)) {
		w->sum->conflicts++;
		report(w, K_CONFLICT, NULL, w->path);
		return 1;
	}
	return 0;
}

/* Owners the host can hold: root inside is the invoking user outside. An
 * entry that kept its host owner (`lower`, when known) is no change. When
 * the user's files show as root's (map_owners), the user's own uid number
 * inside is a stranger like any other: written back as the user, it would
 * come back as root. */
static void check_owner(struct wb *w, const struct stat *st, const struct stat *lower)
{
	const struct machine_request *r = w->req;
	int own_ok = !r->map_owners;
	int uid_ok = st->st_uid == 0 || (own_ok && st->st_uid == r->host_uid) ||
		     (lower && st->st_uid == lower->st_uid);
	int gid_ok = st->st_gid == 0 || (own_ok && st->st_gid == r->host_gid) ||
		     (lower && st->st_gid == lower->st_gid);
	if (!uid_ok || !gid_ok) {
		char detail[64];
		snprintf(detail, sizeof(detail), "%u:%u", (unsigned)st->st_uid, (unsigned)st->st_gid);
		w->sum->owners++;
		report(w, K_OWNER, detail, w->path);
	}
}

/* ---- host operations -------------------------------------------------------------- */

static const char *tmp_name(struct wb *w, char *buf, size_t size, const char *host)
{
	const char *slash = strrchr(host, '/');
	int dir_len = slash ? (int)(slash - host) : 0;
	snprintf(buf, size, "%.*s/.umlroot-wb.%lu", dir_len, host, ++w->tmp_serial);
	return buf;
}

static void set_times(int fd, const char *host, const struct stat *st)
{
	/* mtime only: atime is the host's business. */
	struct timespec ts[2] = {{0, UTIME_OMIT}, st->st_mtim};
	if (fd >= 0)
		futimens(fd, ts);
	else
		utimensat(AT_FDCWD, host, ts, AT_SYMLINK_NOFOLLOW);
}

/* chmod, noting setuid/setgid bits the host refused. */
static void set_mode(struct wb *w, int fd, const char *host, mode_t mode)
{
	int r = fd >= 0 ? fchmod(fd, mode & 07777) : chmod(host, mode & 07777);
	if (r < 0) {
		failed(w, "chmod", errno, w->path);
		return;
	}
	if (mode & 06000) {
		struct stat now;
		r = fd >= 0 ? fstat(fd, &now) : lstat(host, &now);
		if (r == 0 && (now.st_mode & 06000) != (mode & 06000)) {
			w->sum->modebits++;
			report(w, K_MODEBITS, NULL, w->path);
		}
	}
}

/* Write `src`'s data to a temporary name next to `host`, set mode and
 * times, rename over `host`. */
static int write_file(struct wb *w, const char *src, const char *host, const struct stat *st)
{
	char tmp[PATH_MAX + 64];
	tmp_name(w, tmp, sizeof(tmp), host);
	int in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0) {
		failed(w, "open", errno, w->path);
		return -1;
	}
	int out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (out < 0) {
		failed(w, "create", errno, w->path);
		close(in);
		return -1;
	}
	const char *step = NULL;
	int copied = 1; /* 1: not by the host */
	if (st->st_size >= UR_XCOPY_MIN) {
		/* The host's own path of tmp: the scope's, then the rest. */
		char host_path[PATH_MAX + 64];
		snprintf(host_path, sizeof(host_path), "%.*s%s", (int)w->scope_len, w->scope,
			 tmp + strlen(UR_WB));
		copied = copy_by_host(in, out, host_path);
	}
	if (copied < 0 || (copied > 0 && copy_sparse(in, out) < 0))
		step = "copy";
	close(in);
	if (!step) {
		set_mode(w, out, tmp, st->st_mode);
		set_times(out, tmp, st);
	}
	if (close(out) < 0 && !step)
		step = "close";
	if (!step && rename(tmp, host) < 0)
		step = "rename";
	if (step) {
		failed(w, step, errno, w->path);
		unlink(tmp);
		return -1;
	}
	return 0;
}

static int link_file(struct wb *w, const char *first, const char *host)
{
	char tmp[PATH_MAX + 64];
	tmp_name(w, tmp, sizeof(tmp), host);
	if (link(first, tmp) < 0)
		return -1;
	if (rename(tmp, host) < 0) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

/* Move a finished temporary over its target (atomic per path); on failure
 * report it and leave nothing behind. */
static int install_tmp(struct wb *w, const char *tmp, const char *host)
{
	if (rename(tmp, host) == 0)
		return 0;
	failed(w, "rename", errno, w->path);
	unlink(tmp);
	return -1;
}

static int make_symlink(struct wb *w, const char *src, const char *host, const struct stat *hs,
			int host_exists)
{
	char target[PATH_MAX], old[PATH_MAX], tmp[PATH_MAX + 64];
	ssize_t n = readlink(src, target, sizeof(target) - 1);
	if (n < 0) {
		failed(w, "readlink", errno, w->path);
		return -1;
	}
	target[n] = '\0';
	if (host_exists && S_ISLNK(hs->st_mode)) {
		ssize_t m = readlink(host, old, sizeof(old) - 1);
		if (m == n && !memcmp(old, target, (size_t)n))
			return 0;
	}
	tmp_name(w, tmp, sizeof(tmp), host);
	if (symlink(target, tmp) < 0) {
		failed(w, "symlink", errno, w->path);
		return -1;
	}
	if (install_tmp(w, tmp, host) < 0)
		return -1;
	w->sum->symlinks++;
	return 0;
}

static int make_fifo(struct wb *w, const char *host, const struct stat *st,
		     const struct stat *hs, int host_exists)
{
	char tmp[PATH_MAX + 64];
	if (host_exists && S_ISFIFO(hs->st_mode)) {
		if ((hs->st_mode & 07777) != (st->st_mode & 07777))
			set_mode(w, -1, host, st->st_mode);
		return 0;
	}
	tmp_name(w, tmp, sizeof(tmp), host);
	if (mknod(tmp, S_IFIFO | (st->st_mode & 07777), 0) < 0) {
		failed(w, "mkfifo", errno, w->path);
		return -1;
	}
	if (install_tmp(w, tmp, host) < 0)
		return -1;
	w->sum->fifos++;
	return 0;
}

/* ---- hard links ---------------------------------------------------------------------- */

static const char *links_find(dev_t dev, ino_t ino)
{
	for (unsigned i = (unsigned)(ino % LINKS_SLOTS), n = 0; n < LINKS_SLOTS;
	     i = (i + 1) % LINKS_SLOTS, n++) {
		if (!links[i].off)
			return NULL;
		if (links[i].ino == ino && links[i].dev == dev)
			return links_pool + links[i].off - 1;
	}
	return NULL;
}

static void links_add(dev_t dev, ino_t ino, const char *host)
{
	size_t n = strlen(host) + 1;
	if (links_pool_len + n > sizeof(links_pool))
		return;
	for (unsigned i = (unsigned)(ino % LINKS_SLOTS), k = 0; k < LINKS_SLOTS;
	     i = (i + 1) % LINKS_SLOTS, k++) {
		if (!links[i].off) {
			memcpy(links_pool + links_pool_len, host, n);
			links[i].dev = dev;
			links[i].ino = ino;
			links[i].off = (unsigned)links_pool_len + 1;
			links_pool_len += n;
			return;
		}
	}
}

/* ---- deletions (last phase) ------------------------------------------------------------ */

static void defer(struct wb *w, char op)
{
	if (deletions_len + w->len + 2 > sizeof(deletions)) {
		failed(w, "defer deletion", ENOMEM, w->path);
		return;
	}
	deletions[deletions_len++] = op;
	memcpy(deletions + deletions_len, w->path, w->len + 1);
	deletions_len += w->len + 1;
}

static int remove_tree(const char *host);

static int remove_entry(const char *host, const struct stat *hs)
{
	if (S_ISDIR(hs->st_mode))
		return remove_tree(host);
	return unlink(host);
}

static int remove_tree(const char *host)
{
	char child[PATH_MAX];
	struct dir_iter it;
	struct dirent64 *d;
	if (dir_open(&it, host) < 0)
		return -1;
	while ((d = dir_next(&it)) != NULL) {
		struct stat cs;
		snprintf(child, sizeof(child), "%s/%s", host, d->d_name);
		if (lstat(child, &cs) == 0)
			remove_entry(child, &cs);
	}
	dir_close(&it);
	return rmdir(host);
}

/* Delete what a whiteout hides. */
static void apply_whiteout(struct wb *w)
{
	struct stat hs;
	const char *host = host_of(w, w->path);
	if (lstat(host, &hs) < 0)
		return; /* already gone */
	if (conflicts(w, &hs))
		return;
	if (remove_entry(host, &hs) < 0)
		failed(w, "delete", errno, w->path);
	else
		w->sum->deleted++;
}

/* A dir whose entries are all it holds: remove host entries it lacks. Its
 * entries are the upper layer's ('u': opaque, or below one) or the merged
 * view's ('p': renamed, or below one). */
static void apply_prune(struct wb *w, char op)
{
	char host[PATH_MAX + 64];
	struct dir_iter it;
	struct dirent64 *d;
	join(host, UR_WB, w->path + w->scope_len);
	if (dir_open(&it, host) < 0)
		return;
	while ((d = dir_next(&it)) != NULL) {
		struct stat ms;
		size_t old;
		if (path_push(w, d->d_name, &old) < 0)
			continue;
		/* The upper entry was just looked at by the walk: cheaper than
		 * an overlay lookup. */
		int gone = op == 'u' ? (lstat(upper_of(w->path), &ms) < 0 ? errno == ENOENT
									   : is_whiteout(&ms))
				     : lstat(merged_of(w->path), &ms) < 0 && errno == ENOENT;
		if (gone && op == 'u' && state_import_errno) {
			/* Maybe a host addition the state could not take in
			 * (state.c): never taken for a deletion. */
			char detail[256];
			snprintf(detail, sizeof(detail), "not deleted: the state could not copy "
				 "the host's additions in at boot: %s", strerror(state_import_errno));
			w->sum->failed++;
			report(w, K_FAILED, detail, w->path);
		} else if (gone) {
			apply_whiteout(w);
		}
		path_pop(w, old);
	}
	dir_close(&it);
}

/* Directory times after deletions: the merged dir's times, once per dir. */
static void restore_dir_times(struct wb *w, const char *dir)
{
	struct stat ms;
	char host[PATH_MAX + 64];
	if (strlen(dir) < w->scope_len || lstat(merged_of(dir), &ms) < 0)
		return;
	join(host, UR_WB, dir + w->scope_len);
	set_times(-1, host, &ms);
}

static void apply_deletions(struct wb *w)
{
	char last_parent[PATH_MAX] = "";
	int touched = 0; /* last_parent lost an entry: its times to restore */
	for (size_t off = 0; off < deletions_len;) {
		char op = deletions[off];
		const char *p = deletions + off + 1;
		size_t n = strlen(p);
		off += n + 2;
		memcpy(w->path, p, n + 1);
		w->len = n;
		unsigned long before = w->sum->deleted + w->sum->failed;
		if (op == 'w')
			apply_whiteout(w);
		else
			apply_prune(w, op);
		int removed = w->sum->deleted + w->sum->failed != before;
		char *slash = strrchr(w->path, '/');
		if (op != 'w')
			slash = w->path + w->len;
		if (slash) {
			*slash = '\0';
			if (strcmp(last_parent, w->path)) {
				if (touched)
					restore_dir_times(w, last_parent);
				snprintf(last_parent, sizeof(last_parent), "%s", w->path);
				touched = 0;
			}
			touched |= removed;
		}
	}
	if (touched)
		restore_dir_times(w, last_parent);
	deletions_len = 0;
}

/* ---- the walk ----------------------------------------------------------------------------- */

enum source { FROM_UPPER, FROM_MERGED };

static int walk_dir(struct wb *w, enum source src, int depth);
static xb_done_fn batch_done;

/* Returns 1 if it changed the host. */
static int apply_dir(struct wb *w, const struct stat *st, const struct ovl_attrs *a,
		     enum source src, const struct stat *lower, int depth)
{
	struct stat hs;
	int host_exists, lower_same = 0;

	if (src == FROM_UPPER && lower && S_ISDIR(lower->st_mode) && !a->opaque && !a->redirect) {
		/* A copied-up dir: the host has it (a fresh lookup would cost a
		 * host round trip per dir). */
		host_exists = 1;
		hs = *lower;
		/* A time the guest set through hostfs is whole seconds (hostfs
		 * leaves s_time_gran at 1 s): setting it again gives the same. */
		lower_same = lower->st_mode == st->st_mode &&
			     (same_time(&lower->st_mtim, &st->st_mtim) ||
			      (lower->st_mtim.tv_sec == st->st_mtim.tv_sec && lower->st_mtim.tv_nsec == 0));
	} else {
		host_exists = !w->fresh && lstat(host_of(w, w->path), &hs) == 0;
	}
	const char *host = host_of(w, w->path);
	if (host_exists && !S_ISDIR(hs.st_mode)) {
		if (conflicts(w, &hs))
			return 0;
		if (unlink(host) < 0) {
			failed(w, "replace with a directory", errno, w->path);
			return 0;
		}
		host_exists = 0;
	}
	if (!host_exists) {
		if (mkdir(host, 0700) < 0) {
			failed(w, "mkdir", errno, w->path);
			return 0;
		}
		w->sum->dirs++;
	}
	/* Renamed: the merged view is the whole truth (entries come from the
	 * old place). Opaque (new, or `rm -r d; mkdir d`): all entries are in
	 * the upper layer. So is every dir below either: overlayfs marks only
	 * the top one (a dir made inside a new dir is not opaque, yet nothing
	 * of the host's same path shows through it; a file deleted there
	 * leaves no whiteout). Either way, host entries it lacks go at the end. */
	enum source children = src;
	if (src == FROM_UPPER && a->redirect)
		children = FROM_MERGED;
	int whole = children == FROM_MERGED || a->opaque || w->hidden;
	if (whole && host_exists)
		defer(w, children == FROM_MERGED ? 'p' : 'u');
	int was_fresh = w->fresh, was_hidden = w->hidden;
	w->fresh = !host_exists;
	w->hidden = whole;
	int wrote = walk_dir(w, children, depth + 1);
	w->fresh = was_fresh;
	w->hidden = was_hidden;
	if (host_exists && lower_same && !wrote)
		return 0;
	host = host_of(w, w->path);
	int mode_differs = !host_exists || (hs.st_mode & 07777) != (st->st_mode & 07777);
	/* Files of this dir still listed for the host: its mode and times go
	 * after them, or their creation would change the mtime again. */
	if (xb_pending() && xb_add_dir(w->path, st, mode_differs, batch_done, w) == 0)
		return 1;
	if (mode_differs)
		set_mode(w, -1, host, st->st_mode);
	set_times(-1, host, st);
	return 1;
}

/* A new file with its data in the upper layer, small enough that a host
 * round trip of its own would cost more than the copy: listed for the
 * host's batch. 0 when listed. */
static int queue_for_host(struct wb *w, const struct stat *st)
{
	if (st->st_nlink != 1 || st->st_size >= UR_XCOPY_MIN)
		return 1;
	return xb_add_file(w->path, upper_of(w->path), st, batch_done, w);
}

/* Returns 1 if it wrote something to the host, 2 if it listed it for the
 * host's batch. */
static int apply_file(struct wb *w, const struct stat *st, const struct ovl_attrs *a,
		      enum source src, const struct stat *lower)
{
	struct stat hs;

	if (lower) {
		const struct stat ls = *lower;
		if (S_ISREG(ls.st_mode) && ls.st_mode == st->st_mode &&
		    ls.st_size == st->st_size && same_time(&ls.st_mtim, &st->st_mtim)) {
			if (st->st_nlink > 1)
				links_add(st->st_dev, st->st_ino, host_of(w, w->path));
			return 0; /* as on the host */
		}
	}
	/* A big file's XC (its data in the upper layer) waits for a line from
	 * the host, as a batch does: the batch's answer first. */
	if (src == FROM_UPPER && !a->metacopy && st->st_size >= UR_XCOPY_MIN)
		xb_finish(batch_done, w);
	const char *host = host_of(w, w->path);
	int host_exists = !w->fresh && lstat(host, &hs) == 0;
	if (host_exists && conflicts(w, &hs))
		return 0;
	if (host_exists && S_ISDIR(hs.st_mode) && remove_tree(host) < 0) {
		failed(w, "replace a directory", errno, w->path);
		return 0;
	}
	if (st->st_nlink > 1) {
		const char *first = links_find(st->st_dev, st->st_ino);
		if (first && link_file(w, first, host) == 0) {
			w->sum->hardlinks++;
			return 1;
		}
	}
	/* chmod/touch only: the data is the host file's already. */
	if (src == FROM_UPPER && a->metacopy && !a->redirect && host_exists &&
	    S_ISREG(hs.st_mode) && hs.st_size == st->st_size) {
		if ((hs.st_mode & 07777) != (st->st_mode & 07777))
			set_mode(w, -1, host, st->st_mode);
		/* The guest sees host times in whole seconds: keep the host's
		 * own unless CMD changed them. */
		if (!lower || !same_time(&lower->st_mtim, &st->st_mtim))
			set_times(-1, host, st);
		w->sum->metadata_only++;
	} else if (src == FROM_UPPER && !a->metacopy && queue_for_host(w, st) == 0) {
		return 2; /* counted and marked when the host has it: batch_done() */
	} else {
		/* Data in the upper unless metacopy: read it there, else through the overlay. */
		const char *from = src == FROM_UPPER && !a->metacopy ? upper_of(w->path)
								      : merged_of(w->path);
		if (write_file(w, from, host, st) < 0)
			return 0;
		w->sum->files++;
	}
	if (st->st_nlink > 1)
		links_add(st->st_dev, st->st_ino, host_of(w, w->path));
	return 1;
}

/* --state: note on the upper entry that the host has it (see state.c). */
static void mark_on_host(struct wb *w)
{
	if (w->req->persistent && lsetxattr(upper_of(w->path), UR_HOST_MARK, "", 0, 0) < 0)
		klog("writeback: mark %s: %s\n", w->path, strerror(errno));
}

/* What the host did with one entry of a batch (hostbatch.c). */
static void batch_outcome(struct wb *w, const char *path, const struct stat *st, int is_dir,
			  enum xb_outcome outcome, const char *step, int err)
{
	switch (outcome) {
	case XB_YOURS:
		if (is_dir) {
			set_mode(w, -1, host_of(w, path), st->st_mode);
			set_times(-1, host_of(w, path), st);
		} else if (write_file(w, upper_of(path), host_of(w, path), st) == 0) {
			w->sum->files++;
			mark_on_host(w);
		}
		return;
	case XB_FAILED:
		failed(w, step, err, path);
		return;
	case XB_MODEBITS:
		w->sum->modebits++;
		report(w, K_MODEBITS, NULL, path);
		__attribute__((fallthrough)); /* written all the same */
	case XB_WRITTEN:
		if (!is_dir) {
			w->sum->files++;
			mark_on_host(w);
		}
		return;
	}
}

static void batch_done(void *ctx, const char *path, const struct stat *st, int is_dir,
		       enum xb_outcome outcome, const char *step, int err)
{
	/* A flush may come in the middle of the walk: w->path is the walk's. */
	static char walk_path[PATH_MAX];
	struct wb *w = ctx;
	size_t walk_len = w->len, n = strlen(path);
	memcpy(walk_path, w->path, walk_len + 1);
	memcpy(w->path, path, n + 1);
	w->len = n;
	batch_outcome(w, path, st, is_dir, outcome, step, err);
	memcpy(w->path, walk_path, walk_len + 1);
	w->len = walk_len;
}

/* One entry of a dir being written back; returns 1 if the host changed. */
static int apply_entry(struct wb *w, enum source src, int depth)
{
	struct stat st, ls, hs;
	struct ovl_attrs a;
	const char *from = src == FROM_UPPER ? upper_of(w->path) : merged_of(w->path);

	if (lstat(from, &st) < 0) {
		failed(w, "lstat", errno, w->path);
		return 0;
	}
	if (src == FROM_UPPER && is_whiteout(&st)) {
		defer(w, 'w');
		return 1;
	}
	if (read_ovl_attrs(from, &a) < 0) {
		failed(w, "listxattr", errno, w->path);
		return 0;
	}
	if (a.other) {
		w->sum->xattrs++;
		report(w, K_XATTR, NULL, w->path);
	}
	/* In a dir this writeback made, the host (and so the lower) has nothing. */
	int have_lower = src == FROM_UPPER && !a.redirect && !w->fresh &&
			 lstat(lower_of(w->path), &ls) == 0;
	check_owner(w, &st, have_lower ? &ls : NULL);

	int changed = 0;
	switch (st.st_mode & S_IFMT) {
	case S_IFDIR:
		changed = apply_dir(w, &st, &a, src, have_lower ? &ls : NULL, depth);
		break;
	case S_IFREG:
		changed = apply_file(w, &st, &a, src, have_lower ? &ls : NULL);
		break;
	case S_IFLNK:
	case S_IFIFO: {
		const char *host = host_of(w, w->path);
		int host_exists = !w->fresh && lstat(host, &hs) == 0;
		if (host_exists && conflicts(w, &hs))
			return 0;
		if (host_exists && S_ISDIR(hs.st_mode))
			remove_tree(host);
		if (S_ISLNK(st.st_mode))
			changed = make_symlink(w, from, host_of(w, w->path), &hs, host_exists) == 0;
		else
			changed = make_fifo(w, host_of(w, w->path), &st, &hs, host_exists) == 0;
		break;
	}
	case S_IFCHR:
	case S_IFBLK:
		w->sum->devices++;
		report(w, K_DEVICE, NULL, w->path);
		return 0;
	default:
		w->sum->sockets++;
		report(w, K_SOCKET, NULL, w->path);
		return 0;
	}
	if (changed == 1 && src == FROM_UPPER)
		mark_on_host(w);
	return changed != 0;
}

/* Write back every entry of the dir at w->path; returns 1 if the host changed. */
static int walk_dir(struct wb *w, enum source src, int depth)
{
	struct dir_iter it;
	struct dirent64 *d;
	int wrote = 0;
	if (depth > MAX_DEPTH) {
		failed(w, "walk", ELOOP, w->path);
		return 0;
	}
	const char *dir = src == FROM_UPPER ? upper_of(w->path) : merged_of(w->path);
	if (dir_open(&it, dir) < 0) {
		failed(w, "open dir", errno, w->path);
		return 0;
	}
	it.short_batch_ends = src == FROM_UPPER; /* the upper layer is ext4 */
	while ((d = dir_next(&it)) != NULL) {
		size_t old;
		if (path_push(w, d->d_name, &old) < 0) {
			failed(w, "path too long", ENAMETOOLONG, w->path);
			continue;
		}
		wrote |= apply_entry(w, src, depth);
		path_pop(w, old);
	}
	if (it.error)
		failed(w, "readdir", it.error, w->path);
	dir_close(&it);
	return wrote;
}

/* ---- scopes and what lies outside them ------------------------------------------------------ */

/* Is the lower at `scope` hidden by an opaque upper dir above it? (Below a
 * renamed one it shows from elsewhere: left as it was.) */
static int scope_hidden(const char *scope)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", scope);
	for (char *slash = strrchr(dir, '/'); slash && slash != dir; slash = strrchr(dir, '/')) {
		struct ovl_attrs a;
		*slash = '\0';
		if (read_ovl_attrs(upper_of(dir), &a) == 0 && a.opaque)
			return 1;
	}
	return 0;
}

static int write_scope(struct wb *w, const char *scope)
{
	struct stat st;
	w->scope = scope;
	w->scope_len = strlen(scope);
	if (w->scope_len == 1)
		w->scope_len = 0; /* scope "/": host path == guest path */
	struct owner_map map = owner_map_of(w->req);
	const char *step;
	if (mount_hostfs(scope, UR_WB, 0, &map, &step) < 0) {
		failed(w, step, errno, scope);
		return -1;
	}
	snprintf(w->path, sizeof(w->path), "%s", scope);
	w->len = strlen(w->path);
	if (lstat(upper_of(w->path), &st) == 0 && S_ISDIR(st.st_mode)) {
		struct ovl_attrs a;
		struct stat ls;
		int have_lower = lstat(lower_of(w->path), &ls) == 0;
		w->hidden = scope_hidden(scope);
		if (read_ovl_attrs(upper_of(w->path), &a) == 0)
			apply_dir(w, &st, &a, FROM_UPPER, have_lower ? &ls : NULL, 0);
		w->hidden = 0;
		xb_finish(batch_done, w);
		apply_deletions(w);
	}
	if (umount2(UR_WB, 0) < 0)
		klog("umount %s: %s\n", UR_WB, strerror(errno));
	return 0;
}

static void count_outside(struct wb *w, int depth);

static void outside_entry(struct wb *w, unsigned char type, int depth)
{
	const struct machine_request *r = w->req;
	for (int i = 0; i < r->nscopes; i++) {
		size_t n = strlen(r->scopes[i]);
		if (!strcmp(w->path, r->scopes[i])) {
			write_scope(w, r->scopes[i]);
			return;
		}
		/* An ancestor of a scope: look inside. */
		if (type == DT_DIR && n > w->len && is_under(r->scopes[i], w->path, w->len)) {
			count_outside(w, depth + 1);
			return;
		}
	}
	if (type == DT_DIR) {
		struct stat ls;
		if (lstat(lower_of(w->path), &ls) < 0) {
			w->sum->outside++;
			report(w, K_OUTSIDE, NULL, w->path);
		}
		count_outside(w, depth + 1);
		return;
	}
	w->sum->outside++;
	report(w, K_OUTSIDE, NULL, w->path);
}

/* Walk the upper layer outside the scopes, writing back each scope on the
 * way (so the upper layer is read once) and counting everything else. */
static void count_outside(struct wb *w, int depth)
{
	struct dir_iter it;
	struct dirent64 *d;
	if (depth > MAX_DEPTH || dir_open(&it, upper_of(w->path)) < 0)
		return;
	char here[PATH_MAX];
	memcpy(here, w->path, w->len + 1);
	size_t here_len = w->len;
	while ((d = dir_next(&it)) != NULL) {
		size_t old;
		/* write_scope() reuses w->path: restore it after each entry. */
		memcpy(w->path, here, here_len + 1);
		w->len = here_len;
		if (path_push(w, d->d_name, &old) < 0)
			continue;
		outside_entry(w, d->d_type, depth);
	}
	memcpy(w->path, here, here_len + 1);
	w->len = here_len;
	dir_close(&it);
}

static int prepare(void)
{
	if (mkdir(UR_WB, 0700) < 0 && errno != EEXIST)
		return -1;
	if (mkdir(UR_MERGED, 0700) < 0 && errno != EEXIST)
		return -1;
	/* The overlay alone: CMD's view of paths under /run, /tmp, /dev ... */
	return mount("/", UR_MERGED, NULL, MS_BIND, NULL);
}

int writeback(const struct machine_request *req, const char *upper, struct wb_summary *sum)
{
	static struct wb w;
	(void)upper; /* == UR_SCRATCH "/upper", see upper_of() */
	memset(&w, 0, sizeof(w));
	w.req = req;
	w.sum = sum;
	umask(0);
	unlink(REPORT_PATH);
	w.path[0] = '/';
	w.path[1] = '\0';
	w.len = 1;
	int root_scope = 0;
	for (int i = 0; i < req->nscopes; i++)
		root_scope |= !strcmp(req->scopes[i], "/");
	struct timespec t_start, t_end;
	clock_gettime(CLOCK_MONOTONIC, &t_start);
	if (prepare() < 0)
		failed(&w, "prepare writeback", errno, "/");
	else if (root_scope)
		write_scope(&w, "/");
	else
		count_outside(&w, 0);
	clock_gettime(CLOCK_MONOTONIC, &t_end);
	klog("writeback: %ld ms\n", (long)((t_end.tv_sec - t_start.tv_sec) * 1000 +
					      (t_end.tv_nsec - t_start.tv_nsec) / 1000000));
	report_flush();
	if (report_fd >= 0)
		close(report_fd);
	report_fd = -1;
	umount2(UR_MERGED, MNT_DETACH);
	return 0;
}
