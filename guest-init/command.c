/* One command: set-up (its stdio as pipes or a pseudo-terminal, fork and
 * exec in the commands' mount namespace), relay (CMD's output into IO/cN/out.N
 * files the host tails, stdin chunks from IO/cN/in.N, the host's lines:
 * signals, window size, acknowledgements) and reaping (its status, and
 * what it left running). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "init.h"

/* Stop reading CMD's output when the host is this far behind: CMD then
 * blocks on a full pipe, as it would writing to a slow reader on the host. */
#define OUT_WINDOW (32L << 20)
#define STDIN_CHUNK_MAX (4 << 20)
#define RELAY_BUF (1 << 20)
/* After CMD exits, how long to wait for EOF on its output while a
 * background process still holds the pipe open. */
#define DRAIN_GRACE_MS 300

/* The command that runs: its request, IO/cN, the namespace it runs in. */
static const struct command_request *cmd;
static const char *cmd_dir;
static int ns_fd = -1;
static char relay_buf[RELAY_BUF];
static char stdin_buf[STDIN_CHUNK_MAX];

static long now_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

/* ---- set-up ---------------------------------------------------------------------- */

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
	if (cmd->rows && cmd->cols) {
		struct winsize ws = {.ws_row = cmd->rows, .ws_col = cmd->cols};
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
	if (setns(ns_fd, CLONE_NEWNS) < 0)
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
	umask(cmd->umask);
	if (chdir(cmd->cwd) < 0) {
		int err[2] = {errno, 1};
		write_all(exec_err, (const char *)err, sizeof(err));
		_exit(125);
	}
	environ = (char **)cmd->envp; /* the child's own copy of the request */
	errno = exec_command(cmd->argv, cmd->envp);
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
	if (cmd->tty_out || cmd->tty_err || (cmd->tty_in && cmd->tty_out)) {
		io->pty = open_pty(&slave);
		if (io->pty < 0)
			fail("open pseudo-terminal", errno);
	}
	/* stdin: the pty only in an interactive session (host stdin and
	 * stdout both terminals, host in raw mode); otherwise a pipe. */
	if (io->pty >= 0 && cmd->tty_in && cmd->tty_out) {
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
		int is_tty = i == 1 ? cmd->tty_out : cmd->tty_err;
		char path[128];
		snprintf(path, sizeof(path), "%s/out.%d", cmd_dir, i);
		io->out[i].file = open(path, O_WRONLY | O_CLOEXEC);
		if (io->out[i].file < 0)
			fail("open output file", errno);
		if (i == 2 && cmd->merge_stderr) {
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
		int to = cmd->tty_out ? 1 : 2;
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

/* ---- relay -------------------------------------------------------------------------- */

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

/* SIGCHLD as a file descriptor, blocked as a signal (made once). */
static int child_signals(void)
{
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
	return sfd;
}

/* Did exec work? The pipe closes on exec or carries errno (and whether it
 * was the working directory that failed). kind NULL: it did. */
static struct outcome exec_result(struct child_io *io)
{
	int err[2];
	ssize_t n = read(io->exec_err, err, sizeof(err));
	close(io->exec_err);
	if (n != (ssize_t)sizeof(err))
		return (struct outcome){NULL, 0};
	if (err[1])
		return (struct outcome){"nocwd", err[0]};
	if (err[0] == ENOENT || err[0] == ENOTDIR)
		return (struct outcome){"notfound", err[0]};
	return (struct outcome){"noexec", err[0]};
}

/* ---- reaping ------------------------------------------------------------------------ */

/* Reap every child that exited; 1 (and its wait status) once CMD has. */
static int reap(int sfd, pid_t pid, int *status)
{
	struct signalfd_siginfo si;
	int done = 0, wstatus;
	pid_t r;
	while (read(sfd, &si, sizeof(si)) > 0)
		;
	while ((r = waitpid(-1, &wstatus, WNOHANG)) > 0) {
		if (r == pid) {
			*status = wstatus;
			done = 1;
		}
	}
	return done;
}

/* ---- relay loop ---------------------------------------------------------------------- */

/* Feed the loaded stdin chunk to CMD; tell the host when it is used up. */
static void feed_stdin(struct child_io *io, struct stdin_state *st, int writable)
{
	if (writable) {
		ssize_t w = write(io->in_w, stdin_buf + st->off, st->len - st->off);
		if (w > 0)
			st->off += (size_t)w;
		if (w < 0 && errno == EPIPE) {
			/* CMD closed its stdin: drop the rest, as a pipe would. */
			st->off = st->len;
		}
		if (st->off >= st->len) {
			ctl_say("I %ld", st->loaded);
			st->loaded = 0;
		}
	} else if (io->in_w >= 0 && st->loaded && st->len == 0) {
		ctl_say("I %ld", st->loaded);
		st->loaded = 0;
	}
}

/* Relay until CMD has exited and its output has ended (or the grace time
 * after its exit is over); returns its wait status. */
static int relay(struct child_io *io, pid_t pid, int sfd)
{
	struct stdin_state st = {.next = 1};
	int status = 0, cmd_done = 0;
	long drain_deadline = 0;

	for (;;) {
		struct pollfd p[5];
		int np = 0, i_ctl, i_sig, i_in = -1, i_out[3] = {-1, -1, -1};

		/* Lines that arrived along with `r N`, or with the last read. */
		struct running pending = {&st, io, cmd_done ? 0 : pid};
		ctl_dispatch(handle_running_line, &pending);

		/* Load the next stdin chunk once the previous one is in the pipe. */
		if (io->in_w >= 0 && st.loaded == 0 && st.next <= st.ready)
			stdin_load(&st);
		if (io->in_w >= 0 && st.loaded == 0 && st.eof && st.next > st.ready && !io->in_is_pty) {
			close(io->in_w);
			io->in_w = -1;
		}

		i_ctl = np;
		p[np++] = (struct pollfd){.fd = ctl_poll_fd(), .events = POLLIN};
		i_sig = np;
		p[np++] = (struct pollfd){.fd = sfd, .events = POLLIN};
		if (io->in_w >= 0 && st.loaded) {
			i_in = np;
			p[np++] = (struct pollfd){.fd = io->in_w, .events = POLLOUT};
		}
		for (int s = 1; s <= 2; s++) {
			struct stream *o = &io->out[s];
			if (o->src >= 0 && o->written - o->acked < OUT_WINDOW) {
				i_out[s] = np;
				p[np++] = (struct pollfd){.fd = o->src, .events = POLLIN};
			}
		}
		int open_outputs = (io->out[1].src >= 0) + (io->out[2].src >= 0);
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
		if ((p[i_sig].revents & POLLIN) && reap(sfd, cmd_done ? -1 : pid, &status)) {
			cmd_done = 1;
			drain_deadline = now_ms() + DRAIN_GRACE_MS;
		}
		if (p[i_ctl].revents & POLLIN) {
			struct running r = {&st, io, cmd_done ? 0 : pid};
			ctl_read(handle_running_line, &r);
		}
		feed_stdin(io, &st, i_in >= 0 && (p[i_in].revents & (POLLOUT | POLLERR | POLLHUP)));
		for (int s = 1; s <= 2; s++) {
			int k = i_out[s];
			if (k >= 0 && (p[k].revents & (POLLIN | POLLHUP | POLLERR))) {
				if (relay_output(&io->out[s]) < 0) {
					if (io->out[s].src != io->pty)
						close(io->out[s].src);
					io->out[s].src = -1;
				}
			}
		}
	}
	return status;
}

/* Close our ends. Output still produced after CMD is gone belongs to
 * background processes that are about to be killed. No fsync: hostfs
 * writes are host write()s already, visible to the host's reader. */
static void close_io(struct child_io *io)
{
	for (int s = 1; s <= 2; s++) {
		if (io->out[s].error)
			ctl_say("OUTLOST %d %d", s, io->out[s].error);
		if (io->out[s].file >= 0)
			close(io->out[s].file);
		if (io->out[s].src >= 0 && io->out[s].src != io->pty)
			close(io->out[s].src);
	}
	if (io->in_w >= 0 && io->in_w != io->pty)
		close(io->in_w);
	if (io->pty >= 0)
		close(io->pty);
}

struct outcome run_command(const struct command_request *request, const char *dir, int ns)
{
	struct child_io io;
	cmd = request;
	cmd_dir = dir;
	ns_fd = ns;
	int sfd = child_signals();
	pid_t pid = start_command(&io);
	struct outcome failed = exec_result(&io);
	int status = relay(&io, pid, sfd);
	close_io(&io);
	if (failed.kind)
		return failed;
	if (WIFSIGNALED(status))
		return (struct outcome){"signal", WTERMSIG(status)};
	return (struct outcome){"exit", WEXITSTATUS(status)};
}

/* Commands run one at a time: what one leaves running (background jobs,
 * daemons) is killed when it exits, so the next starts from a quiet guest
 * and nothing writes to the overlay while it is written back. */
void kill_leftovers(void)
{
	kill(-1, SIGKILL);
	while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
		;
}

