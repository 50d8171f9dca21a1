/* state_file.c: the `state` file (KVM_STATE), for tests/all/storage.rs.
   Every VM reads the state file while it initializes (boot_state). The main VM keeps a
   read-write descriptor (held_fd) and a FILE* (held) open across wait_for_requests(), so
   request VMs inherit them. With the argument "init-write" the main VM writes
   "written at init" to the state file during initialization.

     read            request VM: fopen(getenv("KVM_STATE"), "r"): "state=<contents>" or
                     "error=<errno>"
     readabs         the same through "/state"
     boot            "main=<main VM's boot_state> storage=<storage VM's boot_state>"
     trywrite        request VM: every way of writing, each "name=<result>"
     inherited       request VM: the inherited descriptors: "pread=<..> offset=<..>"
     set?v=TEXT      storage: fopen("state", "w") + fputs + fclose, then read back:
                     "r=.. data=<what storage read back>"
     append?v=TEXT   storage: fopen("state", "a") + fputs: "r=.. data=<contents now>"
     get             storage: read the file: "r=.. data=<contents>"
     rw              storage: open O_RDWR, lseek/pwrite/pread/ftruncate/fstat round trip
     other           any VM: opening other paths: "<path>=<errno>" ...
     leak            request VM: open the state file and never close it: "fd=<fd>" */
#include "kvm_api.h"
#include "test_util.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char boot_state[512];
static int held_fd = -1;
static FILE *held;

/* The value of `v=` (up to '&' or the end). */
static void value_of(const char *url, char *out, size_t outl)
{
	const char *q = strstr(url, "v=");
	size_t n = 0;
	if (q != NULL) {
		q += 2;
		while (q[n] != 0 && q[n] != '&' && n + 1 < outl)
			n++;
		memcpy(out, q, n);
	}
	out[n] = 0;
}

static const char *err_name(int e)
{
	switch (e) {
	case 0: return "OK";
	case ENOENT: return "ENOENT";
	case EBADF: return "EBADF";
	case EACCES: return "EACCES";
	case EINVAL: return "EINVAL";
	case EROFS: return "EROFS";
	case EEXIST: return "EEXIST";
	case ENOSYS: return "ENOSYS";
	default: return "E?";
	}
}

/* Read the whole state file with stdio into out; returns 0 or errno. */
static int read_state(const char *path, char *out, size_t outl)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return errno;
	const size_t n = fread(out, 1, outl - 1, f);
	out[n] = 0;
	fclose(f);
	return 0;
}

/* ---- storage functions ---- */

static void st_boot(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	storage_return(boot_state, strlen(boot_state));
}

static void st_set(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)res;
	static char out[600];
	FILE *f = fopen("state", "w");
	if (f == NULL) {
		snprintf(out, sizeof(out), "fopen=%s", err_name(errno));
		storage_return(out, strlen(out));
		return;
	}
	if (n == 1)
		fwrite(buf[0].data, 1, buf[0].len, f);
	fclose(f);
	const int e = read_state("state", out, sizeof(out));
	if (e != 0)
		snprintf(out, sizeof(out), "reread=%s", err_name(e));
	storage_return(out, strlen(out));
}

static void st_append(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)res;
	static char out[600];
	FILE *f = fopen(getenv("KVM_STATE"), "a");
	if (f == NULL) {
		snprintf(out, sizeof(out), "fopen=%s", err_name(errno));
		storage_return(out, strlen(out));
		return;
	}
	if (n == 1)
		fwrite(buf[0].data, 1, buf[0].len, f);
	fclose(f);
	read_state("state", out, sizeof(out));
	storage_return(out, strlen(out));
}

static void st_get(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	static char out[600];
	const int e = read_state("/state", out, sizeof(out));
	if (e != 0)
		snprintf(out, sizeof(out), "error=%s", err_name(e));
	storage_return(out, strlen(out));
}

/* O_RDWR round trip with the raw system calls; restores the contents afterwards. */
static void st_rw(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	static char out[600];
	char save[512], b[16] = {0};
	const int e = read_state("state", save, sizeof(save));
	const int fd = open("state", O_RDWR | O_CREAT, 0644);
	if (fd < 0) {
		snprintf(out, sizeof(out), "open=%s", err_name(errno));
		storage_return(out, strlen(out));
		return;
	}
	struct stat st;
	const long w = write(fd, "0123456789", 10);
	const long end = lseek(fd, 0, SEEK_END);
	const long pw = pwrite(fd, "AB", 2, 3);
	const long pr = pread(fd, b, 6, 1);
	const long tr = ftruncate(fd, 4);
	const long fs = fstat(fd, &st);
	const long sy = fsync(fd);
	const long cur = lseek(fd, 0, SEEK_CUR);
	snprintf(out, sizeof(out), "w=%ld end=%ld pwrite=%ld pread=%ld:%s trunc=%ld fstat=%ld size=%ld reg=%d fsync=%ld cur=%ld",
		w, end, pw, pr, b, tr, fs, (long)st.st_size, S_ISREG(st.st_mode), sy, cur);
	/* Put the old contents back. */
	ftruncate(fd, 0);
	if (e == 0)
		pwrite(fd, save, strlen(save), 0);
	close(fd);
	storage_return(out, strlen(out));
}

/* ---- request side ---- */

static void try_open(char *out, size_t outl, const char *name, const char *path, int flags)
{
	errno = 0;
	const int fd = open(path, flags, 0644);
	const size_t at = strlen(out);
	snprintf(out + at, outl - at, "%s%s=%s", at ? " " : "", name, fd >= 0 ? "opened" : err_name(errno));
	if (fd >= 0)
		close(fd);
}

static void others(char *out, size_t outl)
{
	out[0] = 0;
	try_open(out, outl, "../state", "../state", O_RDONLY);
	try_open(out, outl, "state.tmp", "state.tmp", O_RDWR | O_CREAT);
	try_open(out, outl, "/etc/passwd", "/etc/passwd", O_RDONLY);
	try_open(out, outl, "/proc/self/exe", "/proc/self/exe", O_RDONLY);
	try_open(out, outl, "/tmp", "/tmp", O_RDONLY);
}

static void st_others(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	static char out[600];
	others(out, sizeof(out));
	storage_return(out, strlen(out));
}

static void storage_reply(storage_func f, const void *in, size_t inl)
{
	char buf[700], out[800];
	const long r = storage_call(f, in, inl, buf, sizeof(buf) - 1);
	buf[r < 0 ? 0 : r] = 0;
	snprintf(out, sizeof(out), "r=%ld data=%s", r, buf);
	respond(200, out);
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char action[32], v[256], out[2048];
	action_of(url, action, sizeof(action));
	value_of(url, v, sizeof(v));

	if (strcmp(action, "read") == 0 || strcmp(action, "readabs") == 0) {
		char s[512];
		const int e = read_state(action[4] ? "/state" : getenv("KVM_STATE"), s, sizeof(s));
		if (e == 0)
			snprintf(out, sizeof(out), "state=%s", s);
		else
			snprintf(out, sizeof(out), "error=%s", err_name(e));
		respond(200, out);
	} else if (strcmp(action, "boot") == 0) {
		char st[600];
		const long r = storage_call(st_boot, NULL, 0, st, sizeof(st) - 1);
		st[r < 0 ? 0 : r] = 0;
		snprintf(out, sizeof(out), "main=%s storage=%s", boot_state, st);
		respond(200, out);
	} else if (strcmp(action, "trywrite") == 0) {
		out[0] = 0;
		errno = 0;
		FILE *f = fopen("state", "w");
		snprintf(out, sizeof(out), "fopen_w=%s", f ? "opened" : err_name(errno));
		if (f)
			fclose(f);
		errno = 0;
		f = fopen("state", "a");
		snprintf(out + strlen(out), sizeof(out) - strlen(out), " fopen_a=%s", f ? "opened" : err_name(errno));
		if (f)
			fclose(f);
		errno = 0;
		f = fopen("state", "r+");
		snprintf(out + strlen(out), sizeof(out) - strlen(out), " fopen_rplus=%s", f ? "opened" : err_name(errno));
		if (f)
			fclose(f);
		try_open(out, sizeof(out), "trunc", "state", O_RDONLY | O_TRUNC);
		try_open(out, sizeof(out), "creat", "/state", O_WRONLY | O_CREAT);
		errno = 0;
		const long w = write(held_fd, "x", 1);
		snprintf(out + strlen(out), sizeof(out) - strlen(out), " held_write=%ld:%s", w, err_name(errno));
		errno = 0;
		const long t = ftruncate(held_fd, 0);
		snprintf(out + strlen(out), sizeof(out) - strlen(out), " held_trunc=%ld:%s", t, err_name(errno));
		errno = 0;
		const int fp = held ? fputs("y", held) : -2;
		const int ff = held ? fflush(held) : -2;
		snprintf(out + strlen(out), sizeof(out) - strlen(out), " held_fputs_fflush=%d:%s",
			fp < 0 ? fp : ff, err_name(errno));
		errno = 0;
		const int ac = access("state", W_OK);
		snprintf(out + strlen(out), sizeof(out) - strlen(out), " access_w=%d:%s", ac, err_name(errno));
		respond(200, out);
	} else if (strcmp(action, "inherited") == 0) {
		char b[64] = {0};
		const long r = pread(held_fd, b, sizeof(b) - 1, 0);
		const long off = lseek(held_fd, 0, SEEK_CUR);
		char c[64] = {0};
		const long r2 = read(held_fd, c, 4);
		lseek(held_fd, 2, SEEK_SET);
		snprintf(out, sizeof(out), "pread=%ld:%s offset=%ld read=%ld:%s", r, b, off, r2, c);
		respond(200, out);
	} else if (strcmp(action, "set") == 0) {
		storage_reply(st_set, v, strlen(v));
	} else if (strcmp(action, "append") == 0) {
		storage_reply(st_append, v, strlen(v));
	} else if (strcmp(action, "get") == 0) {
		storage_reply(st_get, NULL, 0);
	} else if (strcmp(action, "rw") == 0) {
		storage_reply(st_rw, NULL, 0);
	} else if (strcmp(action, "other") == 0) {
		char s[600];
		others(s, sizeof(s));
		snprintf(out, sizeof(out), "request: %s", s);
		respond(200, out);
	} else if (strcmp(action, "leak") == 0) {
		snprintf(out, sizeof(out), "fd=%d", open("state", O_RDONLY));
		respond(200, out);
	} else if (strcmp(action, "storage_other") == 0) {
		storage_reply(st_others, NULL, 0);
	} else {
		respond(404, "unknown action");
	}
}

int main(int argc, char **argv)
{
	const int e = read_state("state", boot_state, sizeof(boot_state));
	if (e != 0)
		snprintf(boot_state, sizeof(boot_state), "(%s)", err_name(e));
	if (!IS_STORAGE()) {
		if (argc > 1 && strcmp(argv[1], "init-write") == 0) {
			FILE *f = fopen("state", "w");
			if (f) {
				fputs("written at init", f);
				fclose(f);
			}
		}
		held_fd = open("state", O_RDWR | O_CREAT, 0644);
		lseek(held_fd, 2, SEEK_SET);
		held = fopen("state", "r+");
	}
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
