/* --state: the scratch disk persists between runs (see init.h).
 *
 * The metadata file UR_STATE_META in the state disk's root:
 *   format=1            layout version; a newer one is refused by the host
 *   created=<sec>       when the host made the state (host clock)
 *   runs=<n>            runs that finished (CMD exited) on this state
 *   last_seen=<sec.ns>  t0 of the last finished run: host changes after
 *                       it are newer than what the state knows
 *   paths=<n>           entries in the upper layer after the last run
 *
 * Stale rule, applied at boot before the overlay is mounted: a regular file
 * of the upper layer whose host file (same path, lower layer) has a ctime
 * >= last_seen changed on the host since the state last saw it. The host's
 * content wins: the upper file becomes a metacopy of the host file again
 * (data and mtime from the host) and keeps the state's owner, mode and
 * xattrs. Likewise a path the state deleted (a whiteout) that the host has
 * made again since shows through again, and a path the host deleted since
 * goes from the state too if it was a metacopy of the host file (its data
 * is gone) or writeback had put it on the host (marked UR_HOST_MARK); what
 * was kept only inside (device nodes, files outside the scopes) stays.
 * Under an opaque dir (and every dir below one) the host is not seen
 * through: a changed host file's data is copied in, and what the host added
 * since is copied in whole (import_additions). Files under a renamed dir,
 * renamed files and hard links are left alone (their host counterpart is
 * not at the same path).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "init.h"

#define META_MAX 4096
#define MAX_DEPTH 200

struct meta {
	long format;
	long long created;
	long runs;
	struct timespec last_seen;
	long paths;
};

struct walk {
	char upper[PATH_MAX];
	char lower[PATH_MAX];
	size_t upper_len, lower_len;
	struct timespec since;
	unsigned long stale, paths;
};

static int read_meta(const char *scratch, struct meta *m)
{
	char path[PATH_MAX], buf[META_MAX];
	memset(m, 0, sizeof(*m));
	snprintf(path, sizeof(path), "%s/" UR_STATE_META, scratch);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		long long a = 0, b = 0;
		if (sscanf(line, "format=%ld", &m->format) == 1 ||
		    sscanf(line, "created=%lld", &m->created) == 1 ||
		    sscanf(line, "runs=%ld", &m->runs) == 1 ||
		    sscanf(line, "paths=%ld", &m->paths) == 1)
			continue;
		if (sscanf(line, "last_seen=%lld.%lld", &a, &b) >= 1) {
			m->last_seen.tv_sec = (time_t)a;
			m->last_seen.tv_nsec = (long)b;
		}
	}
	return 0;
}

static int write_meta(const char *scratch, const struct meta *m)
{
	char path[PATH_MAX], tmp[PATH_MAX], buf[META_MAX];
	snprintf(path, sizeof(path), "%s/" UR_STATE_META, scratch);
	snprintf(tmp, sizeof(tmp), "%s/" UR_STATE_META ".new", scratch);
	int n = snprintf(buf, sizeof(buf),
			 "format=%ld\ncreated=%lld\nruns=%ld\nlast_seen=%lld.%09ld\npaths=%ld\n",
			 m->format, m->created, m->runs, (long long)m->last_seen.tv_sec,
			 m->last_seen.tv_nsec, m->paths);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	if (write(fd, buf, (size_t)n) != n || fsync(fd) < 0) {
		close(fd);
		return -1;
	}
	close(fd);
	return rename(tmp, path);
}

static int later_or_same(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec > b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec >= b->tv_nsec);
}

static int has_xattr(const char *path, const char *name, char *value, size_t size)
{
	ssize_t n = lgetxattr(path, name, value, size);
	return n >= 0 ? 1 : 0;
}

/* The host file changed since the state saw it: make the upper file a
 * metacopy of it again. */
static void refresh_from_host(struct walk *w, const struct stat *ls)
{
	struct stat us;
	char v[2];
	if (lstat(w->upper, &us) < 0 || !S_ISREG(us.st_mode) || us.st_nlink > 1)
		return;
	if (has_xattr(w->upper, "trusted.overlay.redirect", NULL, 0))
		return;
	int metacopy = has_xattr(w->upper, "trusted.overlay.metacopy", v, 0);
	if (!metacopy && truncate(w->upper, 0) < 0)
		goto fail;
	if (truncate(w->upper, ls->st_size) < 0)
		goto fail;
	if (!metacopy && lsetxattr(w->upper, "trusted.overlay.metacopy", "", 0, 0) < 0)
		goto fail;
	struct timespec ts[2] = {{0, UTIME_OMIT}, ls->st_mtim};
	if (utimensat(AT_FDCWD, w->upper, ts, AT_SYMLINK_NOFOLLOW) < 0)
		goto fail;
	w->stale++;
	return;
fail:
	klog("state: refresh %s from the host: %s\n", w->upper, strerror(errno));
}

/* The state deleted this path, but the host has (re)made it since: the
 * host's entry shows through again. */
static void revive_host_entry(struct walk *w)
{
	struct stat us;
	if (lstat(w->upper, &us) < 0 || !S_ISCHR(us.st_mode) || us.st_rdev != 0)
		return;
	if (unlink(w->upper) < 0) {
		klog("state: drop whiteout %s: %s\n", w->upper, strerror(errno));
		return;
	}
	w->stale++;
}

/* Under an opaque dir the host file is not seen through: copy its data. */
static void copy_from_host(struct walk *w, const struct stat *ls)
{
	struct stat us;
	if (lstat(w->upper, &us) < 0 || !S_ISREG(us.st_mode) || us.st_nlink > 1 ||
	    !has_xattr(w->upper, UR_HOST_MARK, NULL, 0))
		return;
	int in = open(w->lower, O_RDONLY | O_CLOEXEC);
	int out = in < 0 ? -1 : open(w->upper, O_WRONLY | O_TRUNC | O_CLOEXEC);
	struct timespec ts[2] = {{0, UTIME_OMIT}, ls->st_mtim};
	if (out < 0 || copy_sparse(in, out) < 0 || futimens(out, ts) < 0)
		klog("state: copy %s from the host: %s\n", w->upper, strerror(errno));
	else
		w->stale++;
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
}

static int push(char *buf, size_t *len, const char *name)
{
	size_t n = strlen(name);
	if (*len + 1 + n >= PATH_MAX)
		return -1;
	buf[(*len)++] = '/';
	memcpy(buf + *len, name, n + 1);
	*len += n;
	return 0;
}

static void walk(struct walk *w, int check, int marks, int depth);

/* The host no longer has this path. A metacopy has lost its data, and an
 * entry writeback put on the host was deleted there since: the host wins.
 * Anything else (device nodes, files kept only inside) stays. */
static void drop_if_host_deleted(struct walk *w, unsigned char type)
{
	char v[2];
	if (has_xattr(w->upper, "trusted.overlay.redirect", NULL, 0))
		return; /* renamed: its host counterpart was elsewhere */
	int metacopy = type == DT_REG && has_xattr(w->upper, "trusted.overlay.metacopy", v, 0);
	if (!metacopy && !has_xattr(w->upper, UR_HOST_MARK, v, 0))
		return;
	if (unlink(w->upper) < 0) {
		klog("state: drop %s: %s\n", w->upper, strerror(errno));
		return;
	}
	w->stale++;
}

/* `check`: the lower entry at this path is what the overlay shows under
 * it (not under an opaque dir). */
static void reconcile_entry(struct walk *w, unsigned char type, int check)
{
	struct stat ls;
	if (lstat(w->lower, &ls) < 0) {
		if (errno == ENOENT && type != DT_CHR)
			drop_if_host_deleted(w, type);
		return;
	}
	if (!later_or_same(&ls.st_ctim, &w->since))
		return;
	if (type == DT_CHR && check)
		revive_host_entry(w);
	else if (type == DT_REG && S_ISREG(ls.st_mode) && check)
		refresh_from_host(w, &ls);
	else if (type == DT_REG && S_ISREG(ls.st_mode))
		copy_from_host(w, &ls);
}

int state_import_errno;

static void import_failed(const char *path, int err)
{
	klog("state: copy %s from the host: %s\n", path, strerror(err));
	if (!state_import_errno)
		state_import_errno = err;
}

/* Copy the host entry at w->lower to w->upper (new), as the overlay would
 * show it: owner, mode, mtime; marked as on the host. A dir whole. */
static int import_entry(struct walk *w, const struct stat *ls, int depth)
{
	int r = -1;
	if (S_ISREG(ls->st_mode)) {
		int in = open(w->lower, O_RDONLY | O_CLOEXEC);
		int out = in < 0 ? -1 : open(w->upper, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		r = out < 0 || copy_sparse(in, out) < 0 ? -1 : 0;
		if (in >= 0)
			close(in);
		if (out >= 0)
			close(out);
	} else if (S_ISDIR(ls->st_mode)) {
		struct dir_iter it = {.fd = -1};
		struct dirent64 *d;
		if (depth > MAX_DEPTH)
			errno = ELOOP;
		else if (mkdir(w->upper, 0700) == 0 && dir_open(&it, w->lower) == 0)
			r = 0;
		while (r == 0 && (d = dir_next(&it)) != NULL) {
			struct stat cs;
			size_t ul = w->upper_len, ll = w->lower_len;
			if (push(w->upper, &w->upper_len, d->d_name) < 0 ||
			    push(w->lower, &w->lower_len, d->d_name) < 0)
				import_failed(w->lower, ENAMETOOLONG);
			else if (lstat(w->lower, &cs) < 0)
				import_failed(w->lower, errno);
			else
				import_entry(w, &cs, depth + 1);
			w->upper_len = ul;
			w->upper[ul] = '\0';
			w->lower_len = ll;
			w->lower[ll] = '\0';
		}
		if (r == 0 && it.error) {
			errno = it.error;
			r = -1;
		}
		dir_close(&it);
	} else if (S_ISLNK(ls->st_mode)) {
		char target[PATH_MAX];
		ssize_t n = readlink(w->lower, target, sizeof(target) - 1);
		if (n >= 0) {
			target[n] = '\0';
			r = symlink(target, w->upper);
		}
	} else if (S_ISFIFO(ls->st_mode)) {
		r = mknod(w->upper, S_IFIFO | 0600, 0);
	} else {
		return 0; /* device nodes, sockets: writeback never makes them either */
	}
	struct timespec ts[2] = {ls->st_atim, ls->st_mtim};
	if (r < 0 || lchown(w->upper, ls->st_uid, ls->st_gid) < 0 ||
	    (!S_ISLNK(ls->st_mode) && chmod(w->upper, ls->st_mode & 07777) < 0) ||
	    lsetxattr(w->upper, UR_HOST_MARK, "", 0, 0) < 0 ||
	    utimensat(AT_FDCWD, w->upper, ts, AT_SYMLINK_NOFOLLOW) < 0) {
		import_failed(w->lower, errno ? errno : EIO);
		/* Nothing half made: it would hide the host's entry, or be
		 * written back over it. */
		if ((S_ISDIR(ls->st_mode) ? rmdir(w->upper) : unlink(w->upper)) < 0 &&
		    errno != ENOENT)
			klog("state: remove %s: %s\n", w->upper, strerror(errno));
		return -1;
	}
	return 0;
}

/* The upper dir at w->upper hides the host dir at w->lower (opaque, or
 * below an opaque dir), and the host dir changed since: what the host added
 * since is copied in, as the overlay cannot show it. An older host entry
 * missing from the state was deleted inside (outside the scopes, or kept as
 * a conflict before the last run) and stays deleted. */
static void import_additions(struct walk *w, int depth)
{
	struct stat ls;
	struct dir_iter it;
	struct dirent64 *d;
	unsigned long before = w->stale;
	if (lstat(w->lower, &ls) < 0 || !S_ISDIR(ls.st_mode) ||
	    !later_or_same(&ls.st_ctim, &w->since))
		return;
	if (dir_open(&it, w->lower) < 0) {
		import_failed(w->lower, errno);
		return;
	}
	while ((d = dir_next(&it)) != NULL) {
		struct stat us, cs;
		size_t ul = w->upper_len, ll = w->lower_len;
		if (push(w->upper, &w->upper_len, d->d_name) < 0 ||
		    push(w->lower, &w->lower_len, d->d_name) < 0) {
			import_failed(w->lower, ENAMETOOLONG);
		} else if (lstat(w->upper, &us) == 0 && !(S_ISCHR(us.st_mode) && us.st_rdev == 0)) {
			/* The state has it: no host call. */
		} else if (lstat(w->lower, &cs) < 0) {
			if (errno != ENOENT)
				import_failed(w->lower, errno);
		} else if (later_or_same(&cs.st_ctim, &w->since)) {
			/* A whiteout: deleted inside, made again on the host. */
			if (unlink(w->upper) < 0 && errno != ENOENT)
				import_failed(w->upper, errno);
			else if (import_entry(w, &cs, depth + 1) == 0)
				w->stale++;
		}
		w->upper_len = ul;
		w->upper[ul] = '\0';
		w->lower_len = ll;
		w->lower[ll] = '\0';
	}
	if (it.error)
		import_failed(w->lower, it.error);
	dir_close(&it);
	struct timespec ts[2] = {{0, UTIME_OMIT}, ls.st_mtim};
	if (w->stale != before)
		utimensat(AT_FDCWD, w->upper, ts, AT_SYMLINK_NOFOLLOW);
}

/* `marks`: this path is the host path of the entry (not under a renamed
 * dir), so "the host deleted it" can be told. */
static void reconcile_dir(struct walk *w, int check, int marks, int depth)
{
	char v = 0;
	int renamed = has_xattr(w->upper, "trusted.overlay.redirect", NULL, 0);
	int opaque = lgetxattr(w->upper, "trusted.overlay.opaque", &v, 1) == 1 && v == 'y';
	walk(w, check && !renamed && !opaque, marks && !renamed, depth + 1);
	if (marks && !renamed && (opaque || !check))
		import_additions(w, depth);
	/* A dir writeback made that the host removed: gone once empty. */
	struct stat ls;
	if (marks && !renamed && lstat(w->lower, &ls) < 0 && errno == ENOENT &&
	    has_xattr(w->upper, UR_HOST_MARK, NULL, 0) && rmdir(w->upper) == 0)
		w->stale++;
}

/* Walk the upper dir at w->upper (see reconcile_entry/reconcile_dir for
 * `check` and `marks`). */
static void walk(struct walk *w, int check, int marks, int depth)
{
	struct dir_iter it;
	struct dirent64 *d;
	if (depth > MAX_DEPTH || dir_open(&it, w->upper) < 0)
		return;
	while ((d = dir_next(&it)) != NULL) {
		w->paths++;
		if (d->d_type != DT_DIR && !check && !marks)
			continue;
		size_t ul = w->upper_len, ll = w->lower_len;
		if (push(w->upper, &w->upper_len, d->d_name) == 0 &&
		    push(w->lower, &w->lower_len, d->d_name) == 0) {
			if (d->d_type == DT_DIR)
				reconcile_dir(w, check, marks, depth);
			else
				reconcile_entry(w, d->d_type, check);
		}
		w->upper_len = ul;
		w->upper[ul] = '\0';
		w->lower_len = ll;
		w->lower[ll] = '\0';
	}
	dir_close(&it);
}

int state_reconcile(const struct machine_request *req, const char *scratch, const char *lower)
{
	static struct walk w;
	struct meta m;
	(void)req;
	if (read_meta(scratch, &m) < 0) {
		klog("state: no %s in the state disk; nothing to reconcile\n", UR_STATE_META);
		return 0;
	}
	if (m.runs == 0)
		return 0;
	memset(&w, 0, sizeof(w));
	w.since = m.last_seen;
	w.upper_len = (size_t)snprintf(w.upper, sizeof(w.upper), "%s/upper", scratch);
	w.lower_len = (size_t)snprintf(w.lower, sizeof(w.lower), "%s", lower);
	if (w.lower_len == 1)
		w.lower_len = 0; /* "/": children are "/name" */
	walk(&w, 1, 1, 0);
	klog("state: %lu paths, %lu refreshed from the host\n", w.paths, w.stale);
	return 0;
}

static unsigned long count_paths(char *path, size_t len, int depth)
{
	struct dir_iter it;
	struct dirent64 *d;
	unsigned long count = 0;
	if (depth > MAX_DEPTH || dir_open(&it, path) < 0)
		return 0;
	while ((d = dir_next(&it)) != NULL) {
		count++;
		size_t sub = len;
		if (d->d_type == DT_DIR && push(path, &sub, d->d_name) == 0) {
			count += count_paths(path, sub, depth + 1);
			path[len] = '\0';
		}
	}
	dir_close(&it);
	return count;
}

int state_finish(const struct machine_request *req, const char *scratch)
{
	static char path[PATH_MAX];
	struct meta m;
	if (read_meta(scratch, &m) < 0)
		m.format = UR_STATE_FORMAT; /* made by hand: start a record */
	m.runs++;
	m.last_seen = req->t0;
	size_t len = (size_t)snprintf(path, sizeof(path), "%s/upper", scratch);
	m.paths = (long)count_paths(path, len, 0);
	if (write_meta(scratch, &m) < 0) {
		klog("state: write %s: %s\n", UR_STATE_META, strerror(errno));
		return -1;
	}
	return 0;
}
