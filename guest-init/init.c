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
 * This file is the sequence only; the other units do one job each and never
 * call back here: ctl.c (kernel log, control channel, fail/power off),
 * request.c (the machine's and a command's request), command.c (one
 * command: set-up, relay, reaping), writeback.c (with extents.c and
 * hostbatch.c: what the host writes for it), state.c (--state),
 * net.c (--net), copy.c, dir.c, exec.c.
 *
 * Control protocol (lines on /dev/tty1, raw mode):
 *   guest -> host: READY | ERR <step>: <msg> | EXIT <exit|signal|notfound|noexec|nocwd> <n>
 *                  | I <chunk> (stdin chunk consumed) | WB <summary> | WBDONE | DONE
 *                  | OUTLOST <1|2> <errno> (before EXIT: CMD's stdout/stderr
 *                    could not be written to the run dir)
 *                  | LOST <dev>:<count>:<errno> ... (writes the host could not
 *                    store; before WB: `WB lost` follows, nothing written back)
 *                  | XC (during writeback: copy the extents listed in IO/xcopy
 *                    out of the scratch image; extents.c)
 *                  | XB (during writeback: create the files and set the dir
 *                    modes and times listed in IO/xbatch; hostbatch.c)
 *   host -> guest, no command running:
 *                  r <N> [last] (run IO/cN/request; `last`: then finish as
 *                                for `q 1` if it exited or died of a signal,
 *                                else as for `q 0`)
 *                  | W (write back now, then WBDONE)
 *                  | q <1|0> (finish: 1 = write back and record --state,
 *                             0 = neither; then DONE and power off)
 *   host -> guest, after XC:
 *                  x <errno> (0: copied; else the guest copies itself)
 *   host -> guest, after XB:
 *                  x <errno> <lines> (0: applied, `lines` exceptions in
 *                  IO/xbatch.result; else the guest writes the batch itself)
 *   host -> guest, while command N runs:
 *                  i <chunk> <size> (stdin chunk ready as IO/cN/in.<chunk>)
 *                  | e (stdin EOF) | k <signal> | w <rows> <cols>
 *                  | a <1|2> <offset> (host consumed stream up to offset)
 *   Lines of the wrong phase (a late `k` after EXIT) are ignored.
 * A command's stdout/stderr go to IO/cN/out.1 and out.2, which the host tails.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <linux/loop.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "init.h"

/* The machine's request (read at boot), one command's at a time. */
static struct machine_request req;
static struct command_request cmd;
/* The commands' mount namespace (see make_command_namespace). */
static int cmd_ns_fd = -1;

/* ---- boot steps ---------------------------------------------------------- */

static void do_mount(const char *step, const char *src, const char *target,
		     const char *type, unsigned long flags, const char *data)
{
	if (mkdir(target, 0755) < 0 && errno != EEXIST && errno != EROFS)
		fail(step, errno);
	if (mount(src, target, type, flags, data) < 0)
		fail(step, errno);
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

static void mount_root(void)
{
	/* Scratch: no barriers unless it is a --state file (a crash throws
	 * the scratch away anyway, and each UBD flush is a host fsync). */
	const char *scratch_opts = req.persistent ? "noinit_itable" : "noinit_itable,nobarrier";

	struct owner_map map = owner_map_of(&req);
	const char *step;
	if (mount_hostfs("/", UR_STAGE_LOWER, 1, &map, &step) < 0)
		fail(step, errno);
	do_mount("mount scratch disk /dev/ubda", "/dev/ubda", UR_STAGE_SCRATCH, "ext4",
		 MS_NOATIME, scratch_opts);
	if (mkdir(UR_STAGE_SCRATCH "/upper", 0755) < 0 && errno != EEXIST)
		fail("mkdir scratch upper", errno);
	if (mkdir(UR_STAGE_SCRATCH "/work", 0755) < 0 && errno != EEXIST)
		fail("mkdir scratch work", errno);
	if (req.persistent)
		state_reconcile(&req, UR_STAGE_SCRATCH, UR_STAGE_LOWER);
	/* metacopy: chown/chmod copy up metadata only; redirect_dir: renamed
	 * directories are not copied whole. hostfs has no file handles, so no
	 * index/xino. */
	do_mount("mount overlay root", "overlay", UR_STAGE_NEW, "overlay", 0,
		 "lowerdir=" UR_STAGE_LOWER ",upperdir=" UR_STAGE_SCRATCH "/upper,"
		 "workdir=" UR_STAGE_SCRATCH "/work,metacopy=on,redirect_dir=on,index=off,xino=off");
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
	do_mount("mount tmpfs on /run", "tmpfs", UR_STAGE_NEW "/run", "tmpfs",
		 MS_NOSUID | MS_NODEV, "mode=0755");
	do_mount("mount tmpfs on " UR_DIR, "tmpfs", UR_STAGE_NEW UR_DIR, "tmpfs", 0, "mode=0700");
	relocate_mount("move hostfs /", UR_STAGE_LOWER, UR_STAGE_NEW UR_LOWER);
	relocate_mount("move scratch", UR_STAGE_SCRATCH, UR_STAGE_NEW UR_SCRATCH);
	relocate_mount("move run dir", UR_STAGE_IO, UR_STAGE_NEW UR_IO);
	(void)run_dir;

	do_mount("mount devtmpfs on /dev", "devtmpfs", UR_STAGE_NEW "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	do_mount("mount devpts", "devpts", UR_STAGE_NEW "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		 "newinstance,ptmxmode=0666,mode=0620,gid=5");
	do_mount("mount /dev/shm", "tmpfs", UR_STAGE_NEW "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	do_mount("mount /proc", "proc", UR_STAGE_NEW "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	do_mount("mount /sys", "sysfs", UR_STAGE_NEW "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	if (req.tmpfs_tmp)
		do_mount("mount tmpfs on /tmp", "tmpfs", UR_STAGE_NEW "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");

	if (chdir(UR_STAGE_NEW) < 0)
		fail("chdir new root", errno);
	if (mount(UR_STAGE_NEW, "/", NULL, MS_MOVE, NULL) < 0)
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
	const char *dir = UR_STAGE "/debugfs";
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
	ctl_open();
	run_dir_from_env(run_dir, sizeof(run_dir));
	do_mount("mount staging tmpfs on /run", "tmpfs", "/run", "tmpfs", 0, "mode=0755");
	if (mkdir(UR_STAGE, 0755) < 0)
		fail("mkdir " UR_STAGE, errno);
	do_mount("mount run dir", "none", UR_STAGE_IO, "hostfs", MS_NOSUID | MS_NODEV, run_dir);
	read_machine_request(UR_STAGE_IO "/request", &req);
	raise_fault_around();
	if (mkdir(UR_STAGE_NEW, 0755) < 0)
		fail("mkdir " UR_STAGE_NEW, errno);
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

/* ---- relay ---------------------------------------------------------------------- */

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
	 * throwaway scratch disk needs none either (it is thrown away, and a
	 * sync costs a host write of all CMD left there). A --state file and
	 * --disk images do, and only then is it known whether the host stored
	 * all of them. */
	if (req.persistent || req.ndisks > 0) {
		sync();
		lost_writes_report();
	}
	ctl_say("DONE");
	power_off();
}

static void run_numbered(long number, int last)
{
	char dir[64], path[128];
	snprintf(dir, sizeof(dir), UR_IO "/c%ld", number);
	snprintf(path, sizeof(path), "%s/request", dir);
	read_command_request(path, &cmd);
	struct outcome out = run_command(&cmd, dir, cmd_ns_fd);
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
		struct pollfd p = {.fd = ctl_poll_fd(), .events = POLLIN};
		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			fail("poll", errno);
		/* The host is gone: nobody wants the results. */
		if ((p.revents & (POLLIN | POLLHUP)) && ctl_read(handle_idle_line, NULL) < 0)
			finish(0);
	}
}
