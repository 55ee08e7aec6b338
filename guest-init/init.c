/* umlroot guest init: PID 1 of the UML guest.
 *
 * Boot steps, in order (each failure is reported by name to the host):
 *   devtmpfs on /dev, control channel, the machine's request from the host's
 *   run dir, hostfs "/" read-only, scratch ext4, overlay root,
 *   proc/sys/dev/tmp/run, switch into the overlay, the commands' mount
 *   namespace, READY.
 * Then a command loop: for each `r N`, run the command of IO/cN/request as
 * root, relay its stdio, and when it exits kill whatever it left running
 * and report its status. Mounts, files and loop devices stay for the next
 * command. `q` (or `r N last`) ends the guest: write back, sync, power off
 * (and keep trying if that fails).
 *
 * Control protocol (lines on /dev/tty1, raw mode):
 *   guest -> host: READY | ERR <step>: <msg> | EXIT <exit|signal|notfound|noexec|nocwd> <n>
 *                  | I <chunk> (stdin chunk consumed) | WB <summary> | WBDONE | DONE
 *                  | OUTLOST <1|2> <errno> (before EXIT: CMD's stdout/stderr
 *                    could not be written to the run dir)
 *                  | LOST <dev>:<count>:<errno> ... (writes the host could not
 *                    store; before WB: `WB lost` follows, nothing written back)
 *   host -> guest, no command running:
 *                  r <N> [last] (run IO/cN/request; `last`: then finish as
 *                                for `q 1` if it exited or died of a signal,
 *                                else as for `q 0`)
 *                  | W (write back now, then WBDONE)
 *                  | q <1|0> (finish: 1 = write back and record --state,
 *                             0 = neither; then DONE and power off)
 *   host -> guest, while command N runs:
 *                  i <chunk> <size> (stdin chunk ready as IO/cN/in.<chunk>)
 *                  | e (stdin EOF) | k <signal> | w <rows> <cols>
 *                  | a <1|2> <offset> (host consumed stream up to offset)
 *   Lines of the wrong phase (a late `k` after EXIT) are ignored.
 * A command's stdout/stderr go to IO/cN/out.1 and out.2, which the host tails.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <linux/loop.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "init.h"

#define CTL_TTY "/dev/tty1"
/* Stop reading CMD's output when the host is this far behind: CMD then
 * blocks on a full pipe, as it would writing to a slow reader on the host. */
#define OUT_WINDOW (32L << 20)
#define STDIN_CHUNK_MAX (4 << 20)
#define RELAY_BUF (1 << 20)
/* After CMD exits, how long to wait for EOF on its output while a
 * background process still holds the pipe open. */
#define DRAIN_GRACE_MS 300

static int ctl_fd = -1;
static int kmsg_fd = -1;
static struct request req;
/* The commands' mount namespace (see make_command_namespace). */
static int cmd_ns_fd = -1;
/* IO/cN of the command that runs. */
static char cmd_dir[64];
/* Linux caps argv + environment at ARG_MAX-ish sizes (2 MiB by default). */
static char request_buf[4 << 20];
static char machine_buf[1 << 20];
/* Bytes from the host not yet handled (lines may span reads, and one read
 * may hold `r N` and the new command's first lines). */
static char ctl_in[1024];
static size_t ctl_in_len;
static char ctl_line[256];
static char relay_buf[RELAY_BUF];
static char stdin_buf[STDIN_CHUNK_MAX];

/* ---- messages ------------------------------------------------------------ */

/* Returns 0, or -1 with errno set when fd refused the rest. */
static int write_all(int fd, const char *buf, size_t len)
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

static __attribute__((noreturn)) void power_off(void)
{
	sync();
	for (;;) {
		reboot(RB_POWER_OFF);
		/* Never return: PID 1 exiting panics the kernel. */
		sleep(1);
	}
}

static __attribute__((noreturn)) void fail(const char *step, int err)
{
	klog("%s: %s\n", step, strerror(err));
	ctl_say("ERR %s: %s", step, strerror(err));
	power_off();
}

/* ---- boot steps ---------------------------------------------------------- */

static void do_mount(const char *step, const char *src, const char *target,
		     const char *type, unsigned long flags, const char *data)
{
	if (mkdir(target, 0755) < 0 && errno != EEXIST && errno != EROFS)
		fail(step, errno);
	if (mount(src, target, type, flags, data) < 0)
		fail(step, errno);
}

static void open_channels(void)
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

/* The host's run dir, hex-encoded on the kernel command line (init gets
 * unknown `key=value` parameters as environment variables). */
static void run_dir_from_env(char *out, size_t size)
{
	const char *hex = getenv("umlroot_run");
	size_t i = 0;
	if (!hex || strlen(hex) % 2 || strlen(hex) / 2 >= size)
		fail("read umlroot_run from the kernel command line", EINVAL);
	for (; hex[2 * i]; i++) {
		unsigned int byte;
		if (sscanf(hex + 2 * i, "%2x", &byte) != 1)
			fail("decode umlroot_run", EINVAL);
		out[i] = (char)byte;
	}
	out[i] = '\0';
}

static long parse_long(const char *s, int base)
{
	return strtol(s, NULL, base);
}

/* A request file: records of "tag\0value\0", into buf; returns its end. */
static char *load_request(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail("open request", errno);
	size_t len = 0;
	for (;;) {
		ssize_t n = read(fd, buf + len, size - 1 - len);
		if (n < 0)
			fail("read request", errno);
		if (n == 0)
			break;
		len += (size_t)n;
		if (len >= size - 1)
			fail("read request", E2BIG);
	}
	close(fd);
	buf[len] = '\0';
	return buf + len;
}

/* Both files share one format (and parser): the machine's request sets the
 * machine's fields, a command's request the command's. Values point into
 * buf, which must live as long as they are used. */
static void read_request(const char *path, char *buf, size_t size, int command)
{
	char *end = load_request(path, buf, size);
	int argc = 0, envc = 0;
	char *p = buf;
	if (command) {
		req.cwd = NULL;
		req.umask = 022;
		req.tty_in = req.tty_out = req.tty_err = req.merge_stderr = 0;
		req.rows = req.cols = 0;
	}
	while (p < end) {
		char *tag = p;
		char *value = tag + strlen(tag) + 1;
		if (value >= end)
			fail("parse request", EINVAL);
		p = value + strlen(value) + 1;
		if (!strcmp(tag, "arg")) {
			if (argc >= UR_MAX_ARGS)
				fail("parse request: too many arguments", E2BIG);
			req.argv[argc++] = value;
		} else if (!strcmp(tag, "env")) {
			if (envc >= UR_MAX_ENV)
				fail("parse request: too many environment variables", E2BIG);
			req.envp[envc++] = value;
		} else if (!strcmp(tag, "cwd")) {
			req.cwd = value;
		} else if (!strcmp(tag, "umask")) {
			req.umask = (mode_t)parse_long(value, 8);
		} else if (!strcmp(tag, "tty")) {
			req.tty_in = value[0] == '1';
			req.tty_out = value[0] && value[1] == '1';
			req.tty_err = value[0] && value[1] && value[2] == '1';
		} else if (!strcmp(tag, "winsize")) {
			unsigned int rows = 0, cols = 0;
			sscanf(value, "%u %u", &rows, &cols);
			req.rows = (unsigned short)rows;
			req.cols = (unsigned short)cols;
		} else if (!strcmp(tag, "merge-stderr")) {
			req.merge_stderr = value[0] == '1';
		} else if (!strcmp(tag, "tmpfs-tmp")) {
			req.tmpfs_tmp = value[0] == '1';
		} else if (!strcmp(tag, "persistent")) {
			req.persistent = value[0] == '1';
		} else if (!strcmp(tag, "scope")) {
			if (req.nscopes >= UR_MAX_SCOPES)
				fail("parse request: too many writeback scopes", E2BIG);
			req.scopes[req.nscopes++] = value;
		} else if (!strcmp(tag, "t0")) {
			long long sec = 0, nsec = 0;
			sscanf(value, "%lld.%lld", &sec, &nsec);
			req.t0.tv_sec = (time_t)sec;
			req.t0.tv_nsec = (long)nsec;
			req.wb_since = req.t0;
		} else if (!strcmp(tag, "uid")) {
			req.host_uid = (uid_t)parse_long(value, 10);
		} else if (!strcmp(tag, "gid")) {
			req.host_gid = (gid_t)parse_long(value, 10);
		} else if (!strcmp(tag, "verbose")) {
			req.verbose = value[0] == '1';
		} else if (!strcmp(tag, "hostname")) {
			req.hostname = value;
		} else if (!strcmp(tag, "net")) {
			req.net = value[0] == '1';
		} else if (!strcmp(tag, "map-owners")) {
			req.map_owners = value[0] == '1';
		} else if (!strcmp(tag, "disk")) {
			if (req.ndisks >= UR_MAX_DISKS)
				fail("parse request: too many disks", E2BIG);
			struct disk *d = &req.disks[req.ndisks++];
			if (sscanf(value, "%15s %255[^\n]", d->dev, d->name) != 2)
				fail("parse request: disk", EINVAL);
		}
		/* Unknown tags are ignored: an older init keeps working. */
	}
	if (!command)
		return;
	req.argv[argc] = NULL;
	req.envp[envc] = NULL;
	if (argc == 0)
		fail("parse request: no command", EINVAL);
	if (!req.cwd)
		req.cwd = "/";
}

static void mount_root(void)
{
	/* Scratch: no barriers unless it is a --state file (a crash throws
	 * the scratch away anyway, and each UBD flush is a host fsync). */
	const char *scratch_opts = req.persistent ? "noinit_itable" : "noinit_itable,nobarrier";

	struct owner_map map = owner_map_of(&req);
	const char *step;
	if (mount_hostfs("/", "/run/s/lower", 1, &map, &step) < 0)
		fail(step, errno);
	do_mount("mount scratch disk /dev/ubda", "/dev/ubda", "/run/s/scratch", "ext4",
		 MS_NOATIME, scratch_opts);
	if (mkdir("/run/s/scratch/upper", 0755) < 0 && errno != EEXIST)
		fail("mkdir scratch upper", errno);
	if (mkdir("/run/s/scratch/work", 0755) < 0 && errno != EEXIST)
		fail("mkdir scratch work", errno);
	if (req.persistent)
		state_reconcile(&req, "/run/s/scratch", "/run/s/lower");
	/* metacopy: chown/chmod copy up metadata only; redirect_dir: renamed
	 * directories are not copied whole. hostfs has no file handles, so no
	 * index/xino. */
	do_mount("mount overlay root", "overlay", "/run/s/new", "overlay", 0,
		 "lowerdir=/run/s/lower,upperdir=/run/s/scratch/upper,"
		 "workdir=/run/s/scratch/work,metacopy=on,redirect_dir=on,index=off,xino=off");
}

static void relocate_mount(const char *step, const char *from, const char *to)
{
	if (mkdir(to, 0755) < 0 && errno != EEXIST)
		fail(step, errno);
	if (mount(from, to, NULL, MS_MOVE, NULL) < 0)
		fail(step, errno);
}

static void make_disk_links(void)
{
	if (req.ndisks == 0)
		return;
	mkdir("/dev/disk", 0755);
	if (mkdir("/dev/disk/by-umlroot", 0755) < 0 && errno != EEXIST)
		fail("mkdir /dev/disk/by-umlroot", errno);
	for (int i = 0; i < req.ndisks; i++) {
		char link[512], target[64];
		snprintf(link, sizeof(link), "/dev/disk/by-umlroot/%s", req.disks[i].name);
		snprintf(target, sizeof(target), "../../%s", req.disks[i].dev);
		if (symlink(target, link) < 0 && errno != EEXIST)
			fail("symlink /dev/disk/by-umlroot", errno);
		/* No udev here: the partition links exist from the start and
		 * resolve once the kernel has read a partition table (UBD
		 * supports 15 partitions per disk). */
		for (int part = 1; part <= 15; part++) {
			snprintf(link, sizeof(link), "/dev/disk/by-umlroot/%s-part%d",
				 req.disks[i].name, part);
			snprintf(target, sizeof(target), "../../%s%d", req.disks[i].dev, part);
			if (symlink(target, link) < 0 && errno != EEXIST)
				fail("symlink /dev/disk/by-umlroot", errno);
		}
	}
}

static void setup_new_root(const char *run_dir)
{
	do_mount("mount tmpfs on /run", "tmpfs", "/run/s/new/run", "tmpfs",
		 MS_NOSUID | MS_NODEV, "mode=0755");
	do_mount("mount tmpfs on " UR_DIR, "tmpfs", "/run/s/new" UR_DIR, "tmpfs", 0, "mode=0700");
	relocate_mount("move hostfs /", "/run/s/lower", "/run/s/new" UR_LOWER);
	relocate_mount("move scratch", "/run/s/scratch", "/run/s/new" UR_SCRATCH);
	relocate_mount("move run dir", "/run/s/io", "/run/s/new" UR_IO);
	(void)run_dir;

	do_mount("mount devtmpfs on /dev", "devtmpfs", "/run/s/new/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	do_mount("mount devpts", "devpts", "/run/s/new/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		 "newinstance,ptmxmode=0666,mode=0620,gid=5");
	do_mount("mount /dev/shm", "tmpfs", "/run/s/new/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	do_mount("mount /proc", "proc", "/run/s/new/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	do_mount("mount /sys", "sysfs", "/run/s/new/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	if (req.tmpfs_tmp)
		do_mount("mount tmpfs on /tmp", "tmpfs", "/run/s/new/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");

	if (chdir("/run/s/new") < 0)
		fail("chdir new root", errno);
	if (mount("/run/s/new", "/", NULL, MS_MOVE, NULL) < 0)
		fail("switch to overlay root", errno);
	if (chroot(".") < 0)
		fail("chroot overlay root", errno);
	if (chdir("/") < 0)
		fail("chdir /", errno);
	/* /dev/ptmx of devtmpfs belongs to the initial devpts instance. */
	unlink("/dev/ptmx");
	if (symlink("pts/ptmx", "/dev/ptmx") < 0)
		fail("symlink /dev/ptmx", errno);
	symlink("/proc/self/fd", "/dev/fd");
	symlink("/proc/self/fd/0", "/dev/stdin");
	symlink("/proc/self/fd/1", "/dev/stdout");
	symlink("/proc/self/fd/2", "/dev/stderr");
	make_disk_links();
}

/* One mount namespace for every command of this guest, without init's own
 * tree (UR_DIR): what a command mounts is there for the next one. init
 * stays in its own namespace and keeps the commands' one alive with an fd,
 * so it outlives the processes in it; closing the fd at the end unmounts
 * whatever the commands left mounted. */
static void make_command_namespace(void)
{
	int own = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
	if (own < 0)
		fail("open /proc/self/ns/mnt", errno);
	if (unshare(CLONE_NEWNS) < 0)
		fail("unshare the commands' mount namespace", errno);
	if (umount2(UR_DIR, MNT_DETACH) < 0)
		fail("detach " UR_DIR " from the commands' namespace", errno);
	cmd_ns_fd = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
	if (cmd_ns_fd < 0)
		fail("open the commands' mount namespace", errno);
	if (setns(own, CLONE_NEWNS) < 0)
		fail("return to init's mount namespace", errno);
	close(own);
	/* setns put us at the namespace's root: back into the overlay's. */
	if (chdir("/") < 0)
		fail("chdir /", errno);
}

/* A read fault on a file mapping also maps the cached pages around it, up
 * to fault_around_bytes (64 KiB by default; only debugfs can change it). In
 * UML each fault is a round trip through the host, so mapping more per fault
 * is cheaper: 256 KiB cuts a spawn of /bin/true from 47 faults to 38
 * (docs/kernel.md). Best effort: a kernel without debugfs keeps 64 KiB. */
static void raise_fault_around(void)
{
	const char *dir = "/run/s/debugfs";
	char path[64];
	int fd;

	if (mkdir(dir, 0700) < 0 || mount("debugfs", dir, "debugfs", 0, NULL) < 0)
		return;
	snprintf(path, sizeof(path), "%s/fault_around_bytes", dir);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, "262144", 6) != 6)
			klog("fault_around_bytes: %s\n", strerror(errno));
		close(fd);
	}
	umount(dir);
	rmdir(dir);
}

static void boot(void)
{
	char run_dir[4096];

	if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") < 0 && errno != EBUSY)
		fail("mount devtmpfs", errno); /* nothing is reported before the channel opens */
	open_channels();
	run_dir_from_env(run_dir, sizeof(run_dir));
	do_mount("mount staging tmpfs on /run", "tmpfs", "/run", "tmpfs", 0, "mode=0755");
	if (mkdir("/run/s", 0755) < 0)
		fail("mkdir /run/s", errno);
	do_mount("mount run dir", "none", "/run/s/io", "hostfs", MS_NOSUID | MS_NODEV, run_dir);
	read_request("/run/s/io/request", machine_buf, sizeof(machine_buf), 0);
	raise_fault_around();
	if (mkdir("/run/s/new", 0755) < 0)
		fail("mkdir /run/s/new", errno);
	mount_root();
	setup_new_root(run_dir);
	/* `hostname` and uname -n answer as on the host (the kernel says "(none)"). */
	if (req.hostname && sethostname(req.hostname, strlen(req.hostname)) < 0)
		klog("sethostname: %s\n", strerror(errno));
	if (net_setup(req.net) < 0)
		fail("set up the network (--net; details in the kernel log)", EIO);
	/* hostfs keeps one host fd per open guest file: a big chown -R would
	 * otherwise hit EMFILE in the guest (the host limit is raised by umlroot). */
	struct rlimit nofile = {1 << 20, 1 << 20};
	setrlimit(RLIMIT_NOFILE, &nofile);
	make_command_namespace();
}

/* ---- the command ------------------------------------------------------------ */

enum { S_IN, S_OUT, S_ERR };

struct stream {
	int src;         /* pipe or pty master we read CMD's output from, or -1 */
	int file;        /* IO/out.N we write it to */
	long written;    /* bytes written to the file */
	long acked;      /* bytes the host has consumed */
	long forgotten;  /* bytes whose guest page cache copy was dropped */
	int error;       /* errno of the first write the host refused, or 0 */
};

struct child_io {
	int in_w;      /* CMD's stdin pipe (write end), or the pty master, or -1 */
	int in_is_pty;
	int pty;       /* pty master, or -1 */
	int exec_err;  /* CLOEXEC pipe: errno of a failed exec */
	struct stream out[3];
};

static int make_pipe(int fds[2])
{
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -1;
	/* Bigger pipes mean fewer wakeups (each costs a host context switch). */
	fcntl(fds[0], F_SETPIPE_SZ, 1 << 20);
	return 0;
}

static int open_pty(int *slave)
{
	int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0)
		return -1;
	*slave = open(ptsname(master), O_RDWR | O_NOCTTY);
	if (*slave < 0)
		return -1;
	if (req.rows && req.cols) {
		struct winsize ws = {.ws_row = req.rows, .ws_col = req.cols};
		ioctl(master, TIOCSWINSZ, &ws);
	}
	return master;
}

static __attribute__((noreturn)) void exec_child(int fds[3], int exec_err, int ctty)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* CMD sees a normal root: init's own mounts are not in its namespace. */
	if (setns(cmd_ns_fd, CLONE_NEWNS) < 0)
		goto fail;
	setsid();
	if (ctty >= 0)
		ioctl(ctty, TIOCSCTTY, 0);
	for (int i = 0; i < 3; i++)
		if (dup2(fds[i], i) < 0)
			goto fail;
	for (int i = 0; i < 3; i++)
		if (fds[i] > 2)
			close(fds[i]);
	umask(req.umask);
	if (chdir(req.cwd) < 0) {
		int err[2] = {errno, 1};
		write_all(exec_err, (const char *)err, sizeof(err));
		_exit(125);
	}
	environ = req.envp;
	errno = exec_command(req.argv, req.envp);
fail:;
	int err[2] = {errno, 0};
	write_all(exec_err, (const char *)err, sizeof(err));
	_exit(127);
}

/* Start CMD; returns its pid. */
static pid_t start_command(struct child_io *io)
{
	int child_fds[3] = {-1, -1, -1};
	int pipes[3][2];
	int slave = -1, err_pipe[2];

	io->pty = -1;
	io->in_w = -1;
	for (int i = 0; i < 3; i++) {
		io->out[i].src = -1;
		io->out[i].written = io->out[i].acked = io->out[i].forgotten = 0;
		io->out[i].error = 0;
		io->out[i].file = -1;
	}
	if (req.tty_out || req.tty_err || (req.tty_in && req.tty_out)) {
		io->pty = open_pty(&slave);
		if (io->pty < 0)
			fail("open pseudo-terminal", errno);
	}
	/* stdin: the pty only in an interactive session (host stdin and
	 * stdout both terminals, host in raw mode); otherwise a pipe. */
	if (io->pty >= 0 && req.tty_in && req.tty_out) {
		child_fds[0] = slave;
		io->in_w = io->pty;
		io->in_is_pty = 1;
	} else {
		if (make_pipe(pipes[0]) < 0)
			fail("pipe", errno);
		child_fds[0] = pipes[0][0];
		io->in_w = pipes[0][1];
		io->in_is_pty = 0;
	}
	for (int i = 1; i <= 2; i++) {
		int is_tty = i == 1 ? req.tty_out : req.tty_err;
		char path[128];
		snprintf(path, sizeof(path), "%s/out.%d", cmd_dir, i);
		io->out[i].file = open(path, O_WRONLY | O_CLOEXEC);
		if (io->out[i].file < 0)
			fail("open output file", errno);
		if (i == 2 && req.merge_stderr) {
			/* One pipe (or terminal) for both, as 2>&1 would do. */
			child_fds[2] = child_fds[1];
		} else if (is_tty) {
			child_fds[i] = slave;
		} else {
			if (make_pipe(pipes[i]) < 0)
				fail("pipe", errno);
			child_fds[i] = pipes[i][1];
			io->out[i].src = pipes[i][0];
		}
	}
	if (io->pty >= 0) {
		/* The terminal's output goes where the host's terminal is. */
		int to = req.tty_out ? 1 : 2;
		io->out[to].src = io->pty;
	}
	if (pipe2(err_pipe, O_CLOEXEC) < 0)
		fail("pipe", errno);

	pid_t pid = fork();
	if (pid < 0)
		fail("fork", errno);
	if (pid == 0) {
		close(err_pipe[0]);
		exec_child(child_fds, err_pipe[1], slave);
	}
	close(err_pipe[1]);
	io->exec_err = err_pipe[0];
	for (int i = 0; i < 3; i++)
		if (child_fds[i] >= 0 && child_fds[i] != slave &&
		    !(i == 2 && child_fds[2] == child_fds[1]))
			close(child_fds[i]);
	if (slave >= 0)
		close(slave);
	for (int i = 0; i < 3; i++)
		if (io->out[i].src >= 0)
			fcntl(io->out[i].src, F_SETFL, O_NONBLOCK);
	if (io->in_w >= 0)
		fcntl(io->in_w, F_SETFL, O_NONBLOCK);
	return pid;
}

/* ---- stdin chunks ---------------------------------------------------------------- */

struct stdin_state {
	long ready;     /* highest chunk number the host announced */
	long next;      /* next chunk to load */
	long loaded;    /* chunk in stdin_buf, or 0 */
	size_t len, off;
	int eof;        /* host said EOF */
	long ready_size[1]; /* unused: chunk sizes come from the file */
};

static void stdin_load(struct stdin_state *st)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/in.%ld", cmd_dir, st->next);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail("open stdin chunk", errno);
	size_t len = 0;
	for (;;) {
		ssize_t n = read(fd, stdin_buf + len, sizeof(stdin_buf) - len);
		if (n < 0)
			fail("read stdin chunk", errno);
		if (n == 0 || len + (size_t)n == sizeof(stdin_buf)) {
			len += (size_t)n;
			break;
		}
		len += (size_t)n;
	}
	close(fd);
	unlink(path);
	st->loaded = st->next++;
	st->len = len;
	st->off = 0;
}

/* ---- relay ---------------------------------------------------------------------- */

static long clock_ms(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static long now_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

void forget_written(int fd, off_t from, off_t len)
{
	posix_fadvise(fd, from, len, POSIX_FADV_DONTNEED);
}

static int relay_output(struct stream *s)
{
	ssize_t n = read(s->src, relay_buf, sizeof(relay_buf));
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		return -1; /* EIO: pty slave closed by everyone */
	}
	if (n == 0)
		return -1;
	/* A run dir on a full filesystem loses CMD's output: keep reading (CMD
	 * must not block), and tell the host once CMD is done. */
	if (s->error || write_all(s->file, relay_buf, (size_t)n) < 0) {
		if (!s->error)
			s->error = errno;
		return 0;
	}
	s->written += n;
	if (s->written - s->forgotten >= RELAY_BUF) { /* a syscall per MiB, not per write */
		forget_written(s->file, s->forgotten, s->written - s->forgotten);
		s->forgotten = s->written;
	}
	return 0;
}

static void handle_host_line(char *line, struct stdin_state *st, struct child_io *io, pid_t pid)
{
	long a = 0, b = 0;
	switch (line[0]) {
	case 'i':
		if (sscanf(line + 1, "%ld %ld", &a, &b) >= 1 && a > st->ready)
			st->ready = a;
		break;
	case 'e':
		st->eof = 1;
		break;
	case 'k':
		if (sscanf(line + 1, "%ld", &a) == 1 && pid > 0)
			kill(-pid, (int)a);
		break;
	case 'w':
		if (sscanf(line + 1, "%ld %ld", &a, &b) == 2 && io->pty >= 0) {
			struct winsize ws = {.ws_row = (unsigned short)a, .ws_col = (unsigned short)b};
			ioctl(io->pty, TIOCSWINSZ, &ws);
		}
		break;
	case 'a':
		if (sscanf(line + 1, "%ld %ld", &a, &b) == 2 && (a == 1 || a == 2) &&
		    io->out[a].file >= 0) {
			io->out[a].acked = b;
			/* The host has the bytes: drop them from the guest's page cache. */
			posix_fadvise(io->out[a].file, 0, b, POSIX_FADV_DONTNEED);
		}
		break;
	}
}


struct outcome {
	const char *kind; /* exit, signal, notfound, noexec, nocwd */
	int value;
};

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
static void ctl_dispatch(void (*handle)(char *line, void *ctx), void *ctx)
{
	char *line;
	while ((line = ctl_next_line()) != NULL)
		handle(line, ctx);
}

/* Read what the host sent and dispatch it. Returns -1 when the channel is
 * gone (the host closed it: nothing left to do). */
static int ctl_read(void (*handle)(char *line, void *ctx), void *ctx)
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

struct running {
	struct stdin_state *st;
	struct child_io *io;
	pid_t pid; /* 0 once CMD has exited: signals go nowhere */
};

static void handle_running_line(char *line, void *ctx)
{
	struct running *r = ctx;
	handle_host_line(line, r->st, r->io, r->pid);
}

static struct outcome run_command(void)
{
	struct child_io io;
	struct stdin_state st = {.next = 1};
	int status = 0, cmd_done = 0;
	long drain_deadline = 0;

	static int sfd = -1;
	if (sfd < 0) {
		sigset_t chld;
		sigemptyset(&chld);
		sigaddset(&chld, SIGCHLD);
		sigprocmask(SIG_BLOCK, &chld, NULL);
		sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
		if (sfd < 0)
			fail("signalfd", errno);
	}

	pid_t pid = start_command(&io);

	/* Did exec work? The pipe closes on exec or carries errno. */
	int err[2];
	ssize_t n = read(io.exec_err, err, sizeof(err));
	close(io.exec_err);
	struct outcome failed = {NULL, 0};
	if (n == (ssize_t)sizeof(err)) {
		if (err[1])
			failed = (struct outcome){"nocwd", err[0]};
		else if (err[0] == ENOENT || err[0] == ENOTDIR)
			failed = (struct outcome){"notfound", err[0]};
		else
			failed = (struct outcome){"noexec", err[0]};
	}

	for (;;) {
		struct pollfd p[5];
		int np = 0, i_ctl, i_sig, i_in = -1, i_out[3] = {-1, -1, -1};

		/* Lines that arrived along with `r N`, or with the last read. */
		struct running pending = {&st, &io, cmd_done ? 0 : pid};
		ctl_dispatch(handle_running_line, &pending);

		/* Load the next stdin chunk once the previous one is in the pipe. */
		if (io.in_w >= 0 && st.loaded == 0 && st.next <= st.ready)
			stdin_load(&st);
		if (io.in_w >= 0 && st.loaded == 0 && st.eof && st.next > st.ready && !io.in_is_pty) {
			close(io.in_w);
			io.in_w = -1;
		}

		i_ctl = np;
		p[np++] = (struct pollfd){.fd = ctl_fd, .events = POLLIN};
		i_sig = np;
		p[np++] = (struct pollfd){.fd = sfd, .events = POLLIN};
		if (io.in_w >= 0 && st.loaded) {
			i_in = np;
			p[np++] = (struct pollfd){.fd = io.in_w, .events = POLLOUT};
		}
		for (int s = 1; s <= 2; s++) {
			struct stream *o = &io.out[s];
			if (o->src >= 0 && o->written - o->acked < OUT_WINDOW) {
				i_out[s] = np;
				p[np++] = (struct pollfd){.fd = o->src, .events = POLLIN};
			}
		}
		int open_outputs = (io.out[1].src >= 0) + (io.out[2].src >= 0);
		if (cmd_done && open_outputs == 0)
			break;
		int timeout = -1;
		if (cmd_done) {
			timeout = (int)(drain_deadline - now_ms());
			if (timeout <= 0)
				break;
		}
		if (poll(p, (nfds_t)np, timeout) < 0) {
			if (errno == EINTR)
				continue;
			fail("poll", errno);
		}
		if (p[i_sig].revents & POLLIN) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof(si)) > 0)
				;
			int wstatus;
			pid_t r;
			while ((r = waitpid(-1, &wstatus, WNOHANG)) > 0) {
				if (r == pid) {
					status = wstatus;
					cmd_done = 1;
					drain_deadline = now_ms() + DRAIN_GRACE_MS;
				}
			}
		}
		if (p[i_ctl].revents & POLLIN) {
			struct running r = {&st, &io, cmd_done ? 0 : pid};
			ctl_read(handle_running_line, &r);
		}
		if (i_in >= 0 && (p[i_in].revents & (POLLOUT | POLLERR | POLLHUP))) {
			ssize_t w = write(io.in_w, stdin_buf + st.off, st.len - st.off);
			if (w > 0)
				st.off += (size_t)w;
			if (w < 0 && errno == EPIPE) {
				/* CMD closed its stdin: drop the rest, as a pipe would. */
				st.off = st.len;
			}
			if (st.off >= st.len) {
				ctl_say("I %ld", st.loaded);
				st.loaded = 0;
			}
		} else if (io.in_w >= 0 && st.loaded && st.len == 0) {
			ctl_say("I %ld", st.loaded);
			st.loaded = 0;
		}
		for (int s = 1; s <= 2; s++) {
			int k = i_out[s];
			if (k >= 0 && (p[k].revents & (POLLIN | POLLHUP | POLLERR))) {
				if (relay_output(&io.out[s]) < 0) {
					if (io.out[s].src != io.pty)
						close(io.out[s].src);
					io.out[s].src = -1;
				}
			}
		}
	}
	/* Output that is still being produced after CMD is gone belongs to
	 * background processes that are about to be killed. */
	/* No fsync: hostfs writes are host write()s already, visible to the
	 * host's reader; a host fsync would only add a disk flush. */
	for (int s = 1; s <= 2; s++) {
		if (io.out[s].error)
			ctl_say("OUTLOST %d %d", s, io.out[s].error);
		if (io.out[s].file >= 0)
			close(io.out[s].file);
		if (io.out[s].src >= 0 && io.out[s].src != io.pty)
			close(io.out[s].src);
	}
	if (io.in_w >= 0 && io.in_w != io.pty)
		close(io.in_w);
	if (io.pty >= 0)
		close(io.pty);
	if (failed.kind)
		return failed;
	if (WIFSIGNALED(status))
		return (struct outcome){"signal", WTERMSIG(status)};
	return (struct outcome){"exit", WEXITSTATUS(status)};
}

/* A loop device CMD left attached pins the filesystem it sits on (an image
 * on a --disk would then be left "needs recovery"): detach them all. */
static void detach_loop_devices(void)
{
	DIR *dir = opendir("/sys/block");
	struct dirent *entry;
	if (!dir)
		return;
	while ((entry = readdir(dir)) != NULL) {
		char dev[300];
		if (strncmp(entry->d_name, "loop", 4) != 0)
			continue;
		snprintf(dev, sizeof(dev), "/dev/%s", entry->d_name);
		int fd = open(dev, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ioctl(fd, LOOP_CLR_FD, 0); /* ENXIO when unbound: nothing to do */
		close(fd);
	}
	closedir(dir);
}

/* Commands run one at a time: what one leaves running (background jobs,
 * daemons) is killed when it exits, so the next starts from a quiet guest
 * and nothing writes to the overlay while it is written back. */
static void kill_leftovers(void)
{
	kill(-1, SIGKILL);
	while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
		;
}

/* Returns 1 if writes were lost (nothing written back), else 0. */
static int do_writeback(void)
{
	struct wb_summary sum;
	memset(&sum, 0, sizeof(sum));
	/* What CMD wrote may be gone from the scratch disk: writing back
	 * holes as data would hand back corrupt files as good ones. */
	if (lost_writes_report()) {
		ctl_say("WB lost");
		return 1;
	}
	if (req.nscopes == 0) {
		ctl_say("WB none");
		return 0;
	}
	if (writeback(&req, UR_SCRATCH "/upper", &sum) < 0)
		return 0;
	ctl_say("WB files=%lu dirs=%lu symlinks=%lu fifos=%lu hardlinks=%lu deleted=%lu "
		"metadata=%lu owners=%lu devices=%lu sockets=%lu xattrs=%lu modebits=%lu "
		"conflicts=%lu outside=%lu failed=%lu denied=%lu state=%d",
		sum.files, sum.dirs, sum.symlinks, sum.fifos, sum.hardlinks, sum.deleted,
		sum.metadata_only, sum.owners, sum.devices, sum.sockets, sum.xattrs, sum.modebits,
		sum.conflicts, sum.outside, sum.failed, sum.denied, req.persistent);
	return 0;
}

/* W: write back between commands. Filesystems the commands mounted (an
 * image file under a loop mount) are flushed first, so the files written
 * back hold what those filesystems hold. */
static void writeback_now(void)
{
	sync();
	do_writeback();
	/* What this writeback changed on the host is not a host change the
	 * next one must respect: from now on, only later host changes
	 * conflict. "Now" on the host's clock (UML's lags it by a millisecond
	 * or so): the ctime of a file made there after the last rename, plus a
	 * nanosecond, as ctimes are coarse (a host change within the same
	 * clock tick goes unnoticed). */
	int fd = open(UR_IO "/wb.stamp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	struct stat st;
	if (fd >= 0 && fstat(fd, &st) == 0) {
		req.wb_since = st.st_ctim;
		if (++req.wb_since.tv_nsec >= 1000000000L) {
			req.wb_since.tv_sec++;
			req.wb_since.tv_nsec = 0;
		}
	} else {
		klog("writeback stamp: %s\n", strerror(errno));
		clock_gettime(CLOCK_REALTIME, &req.wb_since);
	}
	if (fd >= 0)
		close(fd);
	unlink(UR_IO "/wb.stamp");
	ctl_say("WBDONE");
}

/* q (or the end of the last command): unmount what the commands left
 * mounted, write back, record the state, sync, power off. */
static __attribute__((noreturn)) void finish(int ran)
{
	kill_leftovers();
	/* The last reference to the commands' namespace: its mounts go away
	 * (loop-mounted images are unmounted cleanly). */
	close(cmd_ns_fd);
	detach_loop_devices();
	int lost = 0;
	if (ran)
		lost = do_writeback();
	else
		ctl_say("WB none");
	/* A state that lost writes is not one to build on: not recorded. */
	if (req.persistent && ran && !lost)
		state_finish(&req, UR_SCRATCH);
	/* hostfs writes are write-through, so writeback needs no sync; a
	 * throwaway scratch disk needs none either (syncing 100 MB that CMD
	 * left in it cost ~0.5 s). A --state file and --disk images do, and
	 * only then is it known whether the host stored all of them. */
	if (req.persistent || req.ndisks > 0) {
		sync();
		lost_writes_report();
	}
	ctl_say("DONE");
	power_off();
}

static void run_numbered(long number, int last)
{
	snprintf(cmd_dir, sizeof(cmd_dir), UR_IO "/c%ld", number);
	char path[128];
	snprintf(path, sizeof(path), "%s/request", cmd_dir);
	read_request(path, request_buf, sizeof(request_buf), 1);
	struct outcome out = run_command();
	kill_leftovers();
	ctl_say("EXIT %s %d", out.kind, out.value);
	if (last)
		finish(!strcmp(out.kind, "exit") || !strcmp(out.kind, "signal"));
}

/* A line while no command runs. */
static void handle_idle_line(char *line, void *ctx)
{
	(void)ctx;
	long number = 0;
	char last[8] = "";
	switch (line[0]) {
	case 'r':
		if (sscanf(line + 1, "%ld %7s", &number, last) >= 1 && number > 0)
			run_numbered(number, !strcmp(last, "last"));
		break;
	case 'W':
		writeback_now();
		break;
	case 'q':
		finish(line[1] == ' ' && line[2] == '1');
	}
}

int main(void)
{
	if (getpid() != 1) {
		fprintf(stderr, "umlroot-init: must run as PID 1 of a UML guest\n");
		return 2;
	}
	long init_started = clock_ms(CLOCK_BOOTTIME);
	boot();
	/* The host shows these in --verbose's timing breakdown. */
	ctl_say("READY %ld %ld", init_started, clock_ms(CLOCK_BOOTTIME));
	for (;;) {
		struct pollfd p = {.fd = ctl_fd, .events = POLLIN};
		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			fail("poll", errno);
		/* The host is gone: nobody wants the results. */
		if ((p.revents & (POLLIN | POLLHUP)) && ctl_read(handle_idle_line, NULL) < 0)
			finish(0);
	}
}
