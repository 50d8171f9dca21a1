/* files.c: allowed_paths, current_working_directory and descriptors from a request handler,
   for tests/all/files.rs (glibc and musl).

   main(): holds "/data/a.txt" open at offset 2, writes "/rw/init.txt" (writable path, main VM),
   then waits for requests. Actions (/<prog>/<action>?p=PATH):
     read      the whole file at p: "<contents>" or "error=<errno>"
     ls        the sorted names of directory p (readdir), comma-separated
     stat      "size=<n> dir=<0|1> link=<0|1>" (stat; link from lstat) or "error=<errno>"
     write     open(p, O_WRONLY|O_CREAT|O_TRUNC) and write "x": "wrote" or "error=<errno>"
     mkdir, unlink, rename (p to p.renamed): "ok" or "error=<errno>"
     cwd       getcwd() and what the relative name "b.txt" reads
     held      3 bytes read from the descriptor main() left open (it starts at offset 2)
     leak      the descriptor number open() returns (not closed: the reset closes it)
     mmap      the first bytes of a private file mapping of p
     readlink  readlink(p)
     slurp     read the whole file p &n=N times in 4 MiB read() calls: "bytes=<total>"
*/
#define _GNU_SOURCE
#include "test_util.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>

static int held = -1;
static char out[8192];

static const char *err_name(int e)
{
	switch (e) {
	case ENOENT: return "ENOENT";
	case EROFS: return "EROFS";
	case EXDEV: return "EXDEV";
	case ELOOP: return "ELOOP";
	case ENOTDIR: return "ENOTDIR";
	case EISDIR: return "EISDIR";
	case EACCES: return "EACCES";
	case EBADF: return "EBADF";
	case EEXIST: return "EEXIST";
	case EFAULT: return "EFAULT";
	case EMFILE: return "EMFILE";
	default: return "E?";
	}
}

static void param(const char *url, char *p, size_t pl)
{
	const char *v = query_param(url, "p");
	size_t n = 0;
	while (v && v[n] && v[n] != '&' && n + 1 < pl) {
		p[n] = v[n];
		n++;
	}
	p[n] = 0;
}

static void read_file(const char *p)
{
	FILE *f = fopen(p, "r");
	if (!f) {
		snprintf(out, sizeof(out), "error=%s", err_name(errno));
		return;
	}
	size_t n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = 0;
	fclose(f);
}

static int cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list(const char *p)
{
	DIR *d = opendir(p);
	if (!d) {
		snprintf(out, sizeof(out), "error=%s", err_name(errno));
		return;
	}
	char *names[256];
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL && n < 256)
		names[n++] = strdup(e->d_name);
	closedir(d);
	qsort(names, n, sizeof(names[0]), cmp);
	out[0] = 0;
	for (int i = 0; i < n; i++) {
		snprintf(out + strlen(out), sizeof(out) - strlen(out), "%s%s", i ? "," : "", names[i]);
		free(names[i]);
	}
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char action[32], p[512];
	action_of(url, action, sizeof(action));
	param(url, p, sizeof(p));
	errno = 0;
	if (strcmp(action, "read") == 0) {
		read_file(p);
	} else if (strcmp(action, "ls") == 0) {
		list(p);
	} else if (strcmp(action, "stat") == 0) {
		struct stat st, lst;
		if (stat(p, &st) != 0 && lstat(p, &lst) != 0)
			snprintf(out, sizeof(out), "error=%s", err_name(errno));
		else if (lstat(p, &lst) == 0 && S_ISLNK(lst.st_mode) && stat(p, &st) != 0)
			snprintf(out, sizeof(out), "link=1 target_error=%s", err_name(errno));
		else
			snprintf(out, sizeof(out), "size=%ld dir=%d link=%d", (long)st.st_size,
				 S_ISDIR(st.st_mode), lstat(p, &lst) == 0 && S_ISLNK(lst.st_mode));
	} else if (strcmp(action, "write") == 0) {
		int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0 || write(fd, "x", 1) != 1)
			snprintf(out, sizeof(out), "error=%s", err_name(errno));
		else
			snprintf(out, sizeof(out), "wrote");
		if (fd >= 0)
			close(fd);
	} else if (strcmp(action, "mkdir") == 0 || strcmp(action, "unlink") == 0 ||
		   strcmp(action, "rename") == 0) {
		char to[600];
		snprintf(to, sizeof(to), "%s.renamed", p);
		int r = action[0] == 'm' ? mkdir(p, 0755) : action[0] == 'u' ? unlink(p) : rename(p, to);
		snprintf(out, sizeof(out), "%s", r == 0 ? "ok" : err_name(errno));
		if (r != 0)
			snprintf(out, sizeof(out), "error=%s", err_name(errno));
	} else if (strcmp(action, "cwd") == 0) {
		char c[256];
		char *r = getcwd(c, sizeof(c));
		read_file("b.txt");
		char rel[256];
		snprintf(rel, sizeof(rel), "%.200s", out);
		snprintf(out, sizeof(out), "cwd=%s b.txt=%s", r ? c : "?", rel);
	} else if (strcmp(action, "held") == 0) {
		char b[4] = {0};
		ssize_t n = read(held, b, 3);
		snprintf(out, sizeof(out), "held=%zd:%s", n, b);
	} else if (strcmp(action, "leak") == 0) {
		snprintf(out, sizeof(out), "fd=%d", open("/data/a.txt", O_RDONLY));
	} else if (strcmp(action, "mmap") == 0) {
		int fd = open(p, O_RDONLY);
		char *m = fd < 0 ? MAP_FAILED : mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
		if (m == MAP_FAILED)
			snprintf(out, sizeof(out), "error=%s", err_name(errno));
		else
			snprintf(out, sizeof(out), "%.5s", m);
		if (fd >= 0)
			close(fd);
	} else if (strcmp(action, "slurp") == 0) {
		const char *nv = query_param(url, "n");
		long times = nv ? atol(nv) : 1, total = 0;
		static char buf[4 << 20];
		for (long i = 0; i < times; i++) {
			int fd = open(p, O_RDONLY);
			ssize_t n;
			while (fd >= 0 && (n = read(fd, buf, sizeof(buf))) > 0)
				total += n;
			if (fd >= 0)
				close(fd);
		}
		snprintf(out, sizeof(out), "bytes=%ld", total);
	} else if (strcmp(action, "readlink") == 0) {
		char b[256];
		ssize_t n = readlink(p, b, sizeof(b) - 1);
		if (n < 0)
			snprintf(out, sizeof(out), "error=%s", err_name(errno));
		else
			snprintf(out, sizeof(out), "%.*s", (int)n, b);
	} else {
		respond(404, "unknown action");
		return;
	}
	respond(200, out);
}

int main(void)
{
	held = open("/data/a.txt", O_RDONLY);
	char b[2];
	if (held < 0 || read(held, b, 2) != 2)
		return 1;
	FILE *f = fopen("/rw/init.txt", "w");
	if (f) {
		fputs("written by main", f);
		fclose(f);
	}
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
