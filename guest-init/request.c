/* The requests the host writes into its run directory: the machine's
 * (IO/request, read once at boot) and each command's (IO/c<N>/request).
 * Both are records of "tag\0value\0"; unknown tags are ignored, so an older
 * init keeps working with a newer host. Values point into this unit's
 * buffers. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "init.h"

/* Linux caps argv + environment at ARG_MAX-ish sizes (2 MiB by default). */
static char command_buf[4 << 20];
static char machine_buf[1 << 20];

struct record_iter {
	char *p, *end;
};

static long parse_long(const char *s, int base)
{
	return strtol(s, NULL, base);
}

/* Read a request file into buf; an iterator over its records. */
static struct record_iter load_request(const char *path, char *buf, size_t size)
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
	return (struct record_iter){buf, buf + len};
}

/* The next record's tag and value; 0 at the end. */
static int next_record(struct record_iter *it, char **tag, char **value)
{
	if (it->p >= it->end)
		return 0;
	*tag = it->p;
	*value = *tag + strlen(*tag) + 1;
	if (*value >= it->end)
		fail("parse request", EINVAL);
	it->p = *value + strlen(*value) + 1;
	return 1;
}

void read_machine_request(const char *path, struct machine_request *m)
{
	struct record_iter it = load_request(path, machine_buf, sizeof(machine_buf));
	char *tag, *value;
	while (next_record(&it, &tag, &value)) {
		if (!strcmp(tag, "tmpfs-tmp")) {
			m->tmpfs_tmp = value[0] == '1';
		} else if (!strcmp(tag, "persistent")) {
			m->persistent = value[0] == '1';
		} else if (!strcmp(tag, "scope")) {
			if (m->nscopes >= UR_MAX_SCOPES)
				fail("parse request: too many writeback scopes", E2BIG);
			m->scopes[m->nscopes++] = value;
		} else if (!strcmp(tag, "t0")) {
			long long sec = 0, nsec = 0;
			sscanf(value, "%lld.%lld", &sec, &nsec);
			m->t0.tv_sec = (time_t)sec;
			m->t0.tv_nsec = (long)nsec;
			m->wb_since = m->t0;
		} else if (!strcmp(tag, "uid")) {
			m->host_uid = (uid_t)parse_long(value, 10);
		} else if (!strcmp(tag, "gid")) {
			m->host_gid = (gid_t)parse_long(value, 10);
		} else if (!strcmp(tag, "verbose")) {
			m->verbose = value[0] == '1';
		} else if (!strcmp(tag, "hostname")) {
			m->hostname = value;
		} else if (!strcmp(tag, "net")) {
			m->net = value[0] == '1';
		} else if (!strcmp(tag, "map-owners")) {
			m->map_owners = value[0] == '1';
		} else if (!strcmp(tag, "disk")) {
			if (m->ndisks >= UR_MAX_DISKS)
				fail("parse request: too many disks", E2BIG);
			struct disk *d = &m->disks[m->ndisks++];
			if (sscanf(value, "%15s %255[^\n]", d->dev, d->name) != 2)
				fail("parse request: disk", EINVAL);
		}
	}
}

void read_command_request(const char *path, struct command_request *c)
{
	struct record_iter it = load_request(path, command_buf, sizeof(command_buf));
	char *tag, *value;
	int argc = 0, envc = 0;
	c->cwd = NULL;
	c->umask = 022;
	c->tty_in = c->tty_out = c->tty_err = c->merge_stderr = 0;
	c->rows = c->cols = 0;
	while (next_record(&it, &tag, &value)) {
		if (!strcmp(tag, "arg")) {
			if (argc >= UR_MAX_ARGS)
				fail("parse request: too many arguments", E2BIG);
			c->argv[argc++] = value;
		} else if (!strcmp(tag, "env")) {
			if (envc >= UR_MAX_ENV)
				fail("parse request: too many environment variables", E2BIG);
			c->envp[envc++] = value;
		} else if (!strcmp(tag, "cwd")) {
			c->cwd = value;
		} else if (!strcmp(tag, "umask")) {
			c->umask = (mode_t)parse_long(value, 8);
		} else if (!strcmp(tag, "tty")) {
			c->tty_in = value[0] == '1';
			c->tty_out = value[0] && value[1] == '1';
			c->tty_err = value[0] && value[1] && value[2] == '1';
		} else if (!strcmp(tag, "winsize")) {
			unsigned int rows = 0, cols = 0;
			sscanf(value, "%u %u", &rows, &cols);
			c->rows = (unsigned short)rows;
			c->cols = (unsigned short)cols;
		} else if (!strcmp(tag, "merge-stderr")) {
			c->merge_stderr = value[0] == '1';
		}
	}
	c->argv[argc] = NULL;
	c->envp[envc] = NULL;
	if (argc == 0)
		fail("parse request: no command", EINVAL);
	if (!c->cwd)
		c->cwd = "/";
}
