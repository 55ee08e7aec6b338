/* umlroot guest init: shared declarations.
 *
 * The init is PID 1 of the UML guest. It builds the guest's root (an overlay
 * of the read-only host over the scratch disk), runs the requested command
 * as root, relays its stdio through files in the host's run directory, and
 * reports to the host over the control channel (a UML console, /dev/tty1).
 */
#ifndef UMLROOT_INIT_H
#define UMLROOT_INIT_H

#include <dirent.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

/* Where init keeps its own mounts inside the guest. Commands run in a mount
 * namespace of their own (one for the guest's life, shared by all its
 * commands) in which this tree is detached. */
#define UR_DIR "/run/umlroot"
#define UR_LOWER UR_DIR "/lower"     /* hostfs of host "/", read-only */
#define UR_SCRATCH UR_DIR "/scratch" /* ext4 on /dev/ubda: upper + work */
#define UR_IO UR_DIR "/io"           /* hostfs of the host's run dir, rw */
#define UR_WB UR_DIR "/wb"           /* hostfs of each writeback scope, rw */

/* Where boot assembles that tree before the overlay becomes "/" (in the
 * initial tmpfs on /run, gone once the root is switched). */
#define UR_STAGE "/run/s"
#define UR_STAGE_LOWER UR_STAGE "/lower"     /* becomes UR_LOWER */
#define UR_STAGE_SCRATCH UR_STAGE "/scratch" /* becomes UR_SCRATCH */
#define UR_STAGE_IO UR_STAGE "/io"           /* becomes UR_IO */
#define UR_STAGE_NEW UR_STAGE "/new"         /* the overlay: the new "/" */

#define UR_MAX_ARGS 4096
#define UR_MAX_ENV 8192
#define UR_MAX_SCOPES 64
#define UR_MAX_DISKS 16

struct disk {
	char dev[16];   /* ubdb, ubdc, ... */
	char name[256]; /* stable name under /dev/disk/by-umlroot */
};

/* The requests (request.c): the machine's from IO/request (written before
 * boot), each command's from IO/c<N>/request. Both are records of
 * "tag\0value\0"; values point into the unit's own buffers, which live as
 * long as the guest (the machine's) or until the next command's request. A
 * malformed request fails the boot step that reads it. */
struct machine_request {
	int tmpfs_tmp;  /* mount a fresh tmpfs on /tmp */
	int persistent; /* scratch is a --state file: keep barriers + journal */
	const char *scopes[UR_MAX_SCOPES];
	int nscopes;
	struct timespec t0; /* guest start, host clock: what --state records */
	/* Host changes at or after this conflict: t0, then the end of the
	 * last writeback (which changed the host itself). */
	struct timespec wb_since;
	uid_t host_uid;
	gid_t host_gid;
	int verbose;
	const char *hostname; /* the host's, or NULL */
	struct disk disks[UR_MAX_DISKS];
	int ndisks;
	int net;        /* --net: eth0 is the vector device on slirp */
	int map_owners; /* the invoking user's host files are root's inside */
};

struct command_request {
	char *argv[UR_MAX_ARGS + 1];
	char *envp[UR_MAX_ENV + 1];
	const char *cwd;
	mode_t umask;
	int tty_in, tty_out, tty_err; /* host fd 0/1/2 is a terminal */
	int merge_stderr;             /* stderr goes where stdout goes */
	unsigned short rows, cols;
};

void read_machine_request(const char *path, struct machine_request *m);
void read_command_request(const char *path, struct command_request *c);

/* Messages and the control channel (ctl.c), which every other unit uses.
 * klog() writes a line to the kernel log (the host's run log); ctl_say()
 * one line to the host. fail() reports a failed step both ways and powers
 * off; power_off() syncs and never returns (PID 1 must not exit). */
void ctl_open(void);
int ctl_poll_fd(void);
void ctl_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void klog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
__attribute__((noreturn)) void fail(const char *step, int err);
__attribute__((noreturn)) void power_off(void);
/* Returns 0, or -1 with errno set when fd refused the rest. */
int write_all(int fd, const char *buf, size_t len);
long clock_ms(clockid_t clock);
/* Lines from the host: ctl_read() reads what arrived and hands each
 * complete line to handle(); ctl_dispatch() hands over the lines already
 * received. ctl_read returns -1 once the host closed the channel. */
typedef void ctl_handler(char *line, void *ctx);
void ctl_dispatch(ctl_handler *handle, void *ctx);
int ctl_read(ctl_handler *handle, void *ctx);
/* Wait for the host's answer to a request: the next line that starts with
 * `prefix` (lines of no other kind are due while no command runs). NULL
 * when the channel is gone or timeout_ms (-1: none) passed. */
char *ctl_wait_line(const char *prefix, int timeout_ms);

/* One command (command.c): set up its stdio and start it in the commands'
 * mount namespace `ns_fd`, relay its stdio through the files in `dir`
 * (IO/c<N>) while taking the host's lines, reap it. */
struct outcome {
	const char *kind; /* exit, signal, notfound, noexec, nocwd */
	int value;
};
struct outcome run_command(const struct command_request *cmd, const char *dir, int ns_fd);
/* Kill and reap everything but init (what a command left running). */
void kill_leftovers(void);

/* hostfs mounts (hostfs.c). With `enabled`, host files of uid/gid show as
 * root's and root is written to the host as uid/gid. */
struct owner_map {
	int enabled;
	uid_t uid;
	gid_t gid;
};
/* Mount host_path of the host on target. Returns 0, or -1 with errno set
 * and *failed_step naming what failed. */
int mount_hostfs(const char *host_path, const char *target, int read_only,
		 const struct owner_map *map, const char **failed_step);
/* The map a request asks for. */
struct owner_map owner_map_of(const struct machine_request *req);

/* Writes the host could not store (lostwrites.c): tells the host in one
 * line, `LOST <dev>:<count>:<host errno> ...`, if any guest block device
 * lost writes; returns how many devices did (0: none). */
int lost_writes_report(void);

/* The guest's network (net.c). slirp's fixed addresses: the guest, its
 * netmask, the host (gateway; the host's 127.0.0.1 is reachable there), and
 * slirp's DNS proxy. umlroot/guest/net.py documents the same numbers. */
#define UR_NET_GUEST "10.0.2.15"
#define UR_NET_NETMASK "255.255.255.0"
#define UR_NET_HOST "10.0.2.2"
#define UR_NET_DNS "10.0.2.3"
int net_setup(int with_eth0);

/* Directory iteration (dir.c): entries other than "." and "..". */
struct dir_iter {
	int fd;
	int error;            /* errno of a failed getdents64, or 0 */
	int ended;
	int short_batch_ends; /* caller knows the fs: a short batch is the last */
	long len, off;
	char buf[16384];
};
int dir_open(struct dir_iter *it, const char *path);
struct dirent64 *dir_next(struct dir_iter *it);
void dir_close(struct dir_iter *it);

/* hostfs writes through to the host file, so the guest's page cache copy of
 * what was written is useless: dropping it (copy.c) lets the next write
 * reuse the same guest memory instead of touching, and faulting in, new host
 * pages (docs/writeback.md). */
void forget_written(int fd, off_t from, off_t len);

/* Copy all of `in` to `out` (new or empty), holes and zero blocks left as
 * holes (copy.c). Returns 0, or -1 with errno set. */
int copy_sparse(int in, int out);

/* Writeback by extent (extents.c): files at least this big, when their
 * data is in the upper layer, are copied by the host straight out of the
 * scratch image into `out`, which the guest has created at `host_path` (the
 * host's own path of it). Returns 0 when done, 1 when the caller must copy
 * itself (not possible here), -1 with errno set on failure. */
#define UR_XCOPY_MIN (1L << 20)
int copy_by_host(int in, int out, const char *host_path);
/* Its parts, for hostbatch.c: whether a file lives on the scratch disk;
 * whether that disk lost writes (or cannot tell); write the "logical
 * physical length" lines of `in`'s data extents to `list` (FIEMAP; `sync`
 * writes the file out first), 0, or 1 when an extent has no stable place;
 * a string as hex (2 * strlen + 1 bytes). */
int xc_on_scratch(const struct stat *st);
int xc_scratch_untrusted(void);
int xc_list_extents(int in, off_t size, FILE *list, int sync);
void xc_put_hex(char *out, const char *s);

/* Writeback in batches (hostbatch.c): a new file whose data is in the upper
 * layer, and the mode and times of the dir that holds it, are listed for
 * the host, which creates them all with its own system calls when the
 * batch is flushed (`XB`), in list order: files first, then their dir.
 * xb_add_*() return 0 when queued (sending the batch first if it is full),
 * 1 when the caller must write the entry itself (not on the scratch disk,
 * an unusual extent). `path` is the host's and the guest's alike
 * (hostfs shows the host's / as it is). xb_send() hands what is listed to
 * the host and goes on (after collecting the answer to the batch before);
 * xb_finish() sends and waits: call it before anything else that waits for
 * a line from the host. Each entry's outcome comes to `done`, in order. */
enum xb_outcome {
	XB_WRITTEN,  /* on the host */
	XB_MODEBITS, /* on the host, but without the setuid/setgid bits it refused */
	XB_FAILED,   /* the host could not: `step` and `err` say why */
	XB_YOURS,    /* the host did not take the batch: write it yourself */
};
typedef void xb_done_fn(void *ctx, const char *path, const struct stat *st, int is_dir,
			enum xb_outcome outcome, const char *step, int err);
int xb_add_file(const char *path, const char *upper, const struct stat *st, xb_done_fn *done,
		void *ctx);
int xb_add_dir(const char *path, const struct stat *st, int set_mode, xb_done_fn *done,
	       void *ctx);
int xb_pending(void);
void xb_send(xb_done_fn *done, void *ctx);
void xb_finish(xb_done_fn *done, void *ctx);

/* Execute argv[0], searched in PATH as a shell does (exec.c). Returns
 * only on failure, with the errno to report: ENOENT when no PATH directory
 * has it (exit 127), else why it cannot be executed (126). */
int exec_command(char *const argv[], char *const envp[]);

/* Writeback (writeback.c): apply what changed under each scope to the host.
 * Returns 0, or -1 after reporting a failure with ctl_say("WBERR ..."). */
struct wb_summary {
	unsigned long files, dirs, symlinks, fifos, hardlinks, deleted, metadata_only;
	unsigned long owners, devices, sockets, xattrs, modebits, conflicts;
	unsigned long outside; /* changes outside every scope: discarded */
	unsigned long failed;  /* paths that could not be written (see the report) */
	unsigned long denied;  /* paths the host does not let the user write */
};
int writeback(const struct machine_request *req, const char *upper, struct wb_summary *sum);

/* --state (state.c). The state disk's root holds UR_STATE_META, a small
 * text file of key=value lines (format, created, runs, last_seen, paths)
 * that the host creates and `umlroot state info` reads with debugfs.
 * state_reconcile() runs before the overlay is mounted: an upper-layer file
 * whose host file changed since the state's last run (host ctime >=
 * last_seen) becomes a metacopy of the host file again (host content and
 * mtime win, the state's owner, mode and xattrs stay), and a whiteout
 * of a path the host made again is dropped. state_finish()
 * records this run (runs+1, last_seen = this run's t0, paths). Both return
 * 0 or -1 after reporting the failing step. */
#define UR_STATE_META "umlroot-state"
/* On upper entries of a --state run that writeback put on the host: if the
 * host deletes one later, the next run drops it from the state too. */
#define UR_HOST_MARK "trusted.umlroot.host"
#define UR_STATE_FORMAT 1
int state_reconcile(const struct machine_request *req, const char *scratch, const char *lower);
/* errno of the first host addition state_reconcile could not copy into the
 * state, or 0: writeback must not take such entries for deletions. */
extern int state_import_errno;
int state_finish(const struct machine_request *req, const char *scratch);

#endif
