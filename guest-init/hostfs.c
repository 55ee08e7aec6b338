/* hostfs mounts of host directories, with the owner mapping.
 *
 * The guest sees the invoking user's host files as root's (uid and gid 0),
 * as fakeroot and a user namespace mapping root to the user do: umlroot's
 * hostfs patch takes `map_root_uid`/`map_root_gid`, which mount(2)'s one
 * data string cannot carry next to a host path (hostfs takes that string
 * whole as the path), so these mounts go through the fsopen(2) API.
 *
 * Its own unit because <linux/mount.h>, which has the fsconfig constants,
 * clashes with glibc's <sys/mount.h> (glibc < 2.37).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "init.h"

struct owner_map owner_map_of(const struct request *req)
{
	struct owner_map map = {req->map_owners, req->host_uid, req->host_gid};
	return map;
}

static int fs_set(int fs, const char *key, const char *value)
{
	return (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, key, value, 0);
}

static int fs_set_id(int fs, const char *key, unsigned int id)
{
	char value[16];
	snprintf(value, sizeof(value), "%u", id);
	return fs_set(fs, key, value);
}

int mount_hostfs(const char *host_path, const char *target, int read_only,
		 const struct owner_map *map, const char **failed_step)
{
	int fs = -1, mnt = -1, err = 0;

	*failed_step = "fsopen hostfs";
	fs = (int)syscall(SYS_fsopen, "hostfs", FSOPEN_CLOEXEC);
	if (fs < 0)
		return -1;
	*failed_step = "hostfs: set the host path";
	if (fs_set(fs, "hostfs", host_path) < 0)
		goto out;
	if (map->enabled) {
		/* EINVAL here: a kernel without umlroot's hostfs owner mapping. */
		*failed_step = "hostfs: show your files as root's (map_root_uid; a kernel "
			       "without this umlroot patch needs `umlroot kernel build`)";
		if (fs_set_id(fs, "map_root_uid", map->uid) < 0 ||
		    fs_set_id(fs, "map_root_gid", map->gid) < 0)
			goto out;
	}
	*failed_step = "hostfs: read-only";
	if (read_only && syscall(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, "ro", NULL, 0) < 0)
		goto out;
	*failed_step = "hostfs: create";
	if (syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
		goto out;
	*failed_step = "hostfs: mount";
	mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, read_only ? MOUNT_ATTR_RDONLY : 0);
	if (mnt < 0)
		goto out;
	*failed_step = "hostfs: mkdir the mount point";
	if (mkdir(target, 0755) < 0 && errno != EEXIST)
		goto out;
	*failed_step = "hostfs: attach";
	if (syscall(SYS_move_mount, mnt, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0)
		goto out;
	*failed_step = NULL;
out:
	err = errno;
	if (mnt >= 0)
		close(mnt);
	close(fs);
	errno = err;
	return *failed_step ? -1 : 0;
}
