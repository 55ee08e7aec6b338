/* Finding and executing CMD the way a shell does.
 *
 * execvp() gives up with EACCES (exit 126) as soon as any PATH directory
 * refused to be searched, even when no directory holds the command. The
 * shell's rule (bash, dash) is kinder and is what users expect from
 * `fakeroot CMD`: look for an executable file in each PATH directory,
 * skipping directories that cannot be searched; not found anywhere -> 127;
 * found but not executable -> 126.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "init.h"

#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin"

static char *sh_argv[UR_MAX_ARGS + 2];

/* execve, and for a file without a #! line or ELF header (ENOEXEC), run it
 * with /bin/sh as execvp and the shells do. Returns only on failure. */
static int exec_file(const char *path, char *const argv[], char *const envp[])
{
	execve(path, argv, envp);
	if (errno != ENOEXEC)
		return errno;
	int n = 0;
	sh_argv[n++] = "/bin/sh";
	sh_argv[n++] = (char *)path;
	for (int i = 1; argv[i] && n < UR_MAX_ARGS + 1; i++)
		sh_argv[n++] = argv[i];
	sh_argv[n] = NULL;
	execve("/bin/sh", sh_argv, envp);
	return errno;
}

int exec_command(char *const argv[], char *const envp[])
{
	const char *name = argv[0];
	if (strchr(name, '/'))
		return exec_file(name, argv, envp);
	if (!*name)
		return ENOENT;
	const char *path = getenv("PATH");
	if (!path)
		path = DEFAULT_PATH;
	int found_unexecutable = 0;
	char candidate[PATH_MAX];
	for (const char *dir = path;; dir++) {
		const char *end = strchrnul(dir, ':');
		int dir_len = (int)(end - dir);
		/* An empty entry is the current directory. */
		int n = dir_len ? snprintf(candidate, sizeof(candidate), "%.*s/%s", dir_len, dir, name)
				: snprintf(candidate, sizeof(candidate), "./%s", name);
		if (n < (int)sizeof(candidate)) {
			struct stat st;
			if (stat(candidate, &st) == 0 && !S_ISDIR(st.st_mode)) {
				if (faccessat(AT_FDCWD, candidate, X_OK, AT_EACCESS) == 0)
					return exec_file(candidate, argv, envp);
				found_unexecutable = 1;
			}
		}
		if (!*end)
			break;
		dir = end;
	}
	return found_unexecutable ? EACCES : ENOENT;
}
