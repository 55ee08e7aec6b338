/* The guest's network (umlroot run --net): loopback always, eth0 when asked.
 *
 * eth0 is UML's vector device on a socketpair whose other end a user-mode
 * slirp on the host serves (umlroot/guest/net.py). slirp has no DHCP client to
 * wait for here: its addresses are fixed by convention (10.0.2.0/24, the
 * host at .2, its DNS proxy at .3, the guest at .15), so the init sets them
 * with a few ioctls, which costs well under a millisecond of boot.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include "init.h"

/* mkdir -p of the directories above `path` (not `path` itself). */
static void make_parents(const char *path)
{
	char dir[4096];

	snprintf(dir, sizeof(dir), "%s", path);
	for (char *slash = strchr(dir + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
		*slash = '\0';
		mkdir(dir, 0755);
		*slash = '/';
	}
}

static void set_ipv4(struct sockaddr *sa, const char *dotted)
{
	struct sockaddr_in *in = (struct sockaddr_in *)sa;

	memset(in, 0, sizeof(*in));
	in->sin_family = AF_INET;
	inet_pton(AF_INET, dotted, &in->sin_addr);
}

static int ifreq_ioctl(int sock, unsigned long op, struct ifreq *ifr, const char *what)
{
	if (ioctl(sock, op, ifr) < 0) {
		klog("net: %s %s: %s\n", what, ifr->ifr_name, strerror(errno));
		return -1;
	}
	return 0;
}

static int bring_up(int sock, const char *name)
{
	struct ifreq ifr;

	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (ifreq_ioctl(sock, SIOCGIFFLAGS, &ifr, "get flags") < 0)
		return -1;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	return ifreq_ioctl(sock, SIOCSIFFLAGS, &ifr, "bring up");
}

static int configure_eth0(int sock)
{
	struct ifreq ifr;
	struct rtentry route;

	/* UML names the vector device vec0; tools and people expect eth0. */
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "vec0");
	snprintf(ifr.ifr_newname, sizeof(ifr.ifr_newname), "eth0");
	if (ifreq_ioctl(sock, SIOCSIFNAME, &ifr, "rename") < 0)
		return -1;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "eth0");
	set_ipv4(&ifr.ifr_addr, UR_NET_GUEST);
	if (ifreq_ioctl(sock, SIOCSIFADDR, &ifr, "set address") < 0)
		return -1;
	set_ipv4(&ifr.ifr_netmask, UR_NET_NETMASK);
	if (ifreq_ioctl(sock, SIOCSIFNETMASK, &ifr, "set netmask") < 0)
		return -1;
	if (bring_up(sock, "eth0") < 0)
		return -1;
	memset(&route, 0, sizeof(route));
	set_ipv4(&route.rt_dst, "0.0.0.0");
	set_ipv4(&route.rt_genmask, "0.0.0.0");
	set_ipv4(&route.rt_gateway, UR_NET_HOST);
	route.rt_flags = RTF_UP | RTF_GATEWAY;
	if (ioctl(sock, SIOCADDRT, &route) < 0) {
		klog("net: default route: %s\n", strerror(errno));
		return -1;
	}
	return 0;
}

/* The guest's own resolv.conf, bind-mounted over the host's view of
 * /etc/resolv.conf: the host's file is not changed, and being a mount it is
 * not in the overlay's upper layer, so writeback never sees it. When the
 * host's file is a symlink (systemd-resolved, NetworkManager), the mount goes
 * on its target, made first if it is missing (it usually lives under /run,
 * which is the guest's own tmpfs). */
static int guest_resolv_conf(void)
{
	static const char text[] = "# umlroot --net: slirp's DNS proxy, which asks the host's resolver\n"
				   "nameserver " UR_NET_DNS "\n";
	const char *ours = UR_DIR "/resolv.conf";
	char target[4096];
	int fd = open(ours, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0 || write(fd, text, sizeof(text) - 1) != (ssize_t)(sizeof(text) - 1)) {
		klog("net: write %s: %s\n", ours, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	if (!realpath("/etc/resolv.conf", target)) {
		/* A dangling symlink or no file: make the file it names. */
		ssize_t n = readlink("/etc/resolv.conf", target, sizeof(target) - 1);

		if (n > 0 && target[0] == '/') {
			target[n] = '\0';
			make_parents(target);
		} else {
			snprintf(target, sizeof(target), "/etc/resolv.conf");
		}
		fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (fd >= 0)
			close(fd);
	}
	if (mount(ours, target, NULL, MS_BIND, NULL) < 0) {
		klog("net: bind %s on %s: %s\n", ours, target, strerror(errno));
		return -1;
	}
	return 0;
}

/* Returns -1 if eth0 was asked for and could not be set up (a failed
 * loopback is only logged: nothing asked for it). */
int net_setup(int with_eth0)
{
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int rc = 0;

	if (sock < 0) {
		klog("net: socket: %s\n", strerror(errno));
		return -1;
	}
	/* Loopback is up in every guest: build and test steps talk to
	 * 127.0.0.1 without being "network" (as in `unshare -n`). */
	bring_up(sock, "lo");
	if (with_eth0 && (configure_eth0(sock) < 0 || guest_resolv_conf() < 0))
		rc = -1;
	close(sock);
	return rc;
}
