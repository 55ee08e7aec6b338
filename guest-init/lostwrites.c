/* Writes the host could not store.
 *
 * A UBD write that the host refuses (its filesystem is full, or failing)
 * reaches the guest as an I/O error on a page that ext4 writes back in the
 * background: ext4 logs it and goes on, the command never sees it, and the
 * page's data is gone: a later read gives what the host file holds (a hole,
 * zeros). So the command's own status says nothing about it. umlroot's UBD
 * patch counts such writes per device (sysfs host_write_errors, with the
 * host's errno in host_write_errno), and ext4 counts the errors it met
 * (errors_count): any of them before writeback means the guest's files
 * cannot be trusted, after the final sync that an image or --state file on
 * the host is incomplete.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "init.h"

/* A small decimal sysfs attribute; -1 if it cannot be read (a kernel
 * without the counter, a filesystem not mounted). */
static long read_number(const char *path)
{
	char buf[32];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	return strtol(buf, NULL, 10);
}

int lost_writes_report(void)
{
	char line[1024] = "";
	size_t len = 0;
	int devices = 0;
	DIR *dir = opendir("/sys/block");
	struct dirent *entry;
	if (!dir)
		return 0;
	while ((entry = readdir(dir)) != NULL) {
		char path[300];
		if (strncmp(entry->d_name, "ubd", 3) != 0)
			continue;
		snprintf(path, sizeof(path), "/sys/block/%s/host_write_errors", entry->d_name);
		long lost = read_number(path);
		snprintf(path, sizeof(path), "/sys/block/%s/host_write_errno", entry->d_name);
		long host_errno = read_number(path);
		snprintf(path, sizeof(path), "/sys/fs/ext4/%s/errors_count", entry->d_name);
		long fs_errors = read_number(path);
		if (lost <= 0 && fs_errors <= 0)
			continue;
		if (lost <= 0) {
			/* ext4 met an error the host did not cause: as bad. */
			lost = fs_errors;
			host_errno = 5; /* EIO */
		}
		klog("%s: %ld writes the host could not store (errno %ld), ext4 errors %ld\n",
		     entry->d_name, lost, host_errno, fs_errors);
		devices++;
		len += (size_t)snprintf(line + len, sizeof(line) - len, " %s:%ld:%ld",
					entry->d_name, lost, host_errno);
		if (len >= sizeof(line))
			break;
	}
	closedir(dir);
	if (devices)
		ctl_say("LOST%s", line);
	return devices;
}
