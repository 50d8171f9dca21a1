/* datatree.c: an espeak-like program. At start it walks a data directory tree (as espeak-ng
   does with its espeak-ng-data: opendir/readdir = getdents64, stat, open, read) found at a
   virtual path (argv[1], default /data), loads every voice file below lang/ into memory and
   freezes; a request /<prog>/<voice-name> answers that voice's greeting, and /<prog> lists
   what was loaded.

   "voices": { "filename": "example_datatree",
               "allowed_paths": [{ "virtual": "/data", "real": "/path/to/guest/examples/voices" }] } */
#define _GNU_SOURCE
#include "kvm_api.h"
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct voice {
	char path[512];
	char name[128];
	char greeting[128];
};
static struct voice voices[64];
static int nvoices, ndirs;
static long nbytes;

static void load(const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL || nvoices == 64)
		return;
	struct voice *v = &voices[nvoices];
	snprintf(v->path, sizeof(v->path), "%s", path);
	char line[128];
	while (fgets(line, sizeof(line), f)) {
		nbytes += (long)strlen(line);
		line[strcspn(line, "\n")] = 0;
		if (strncmp(line, "name ", 5) == 0)
			snprintf(v->name, sizeof(v->name), "%s", line + 5);
		else if (strncmp(line, "greeting ", 9) == 0)
			snprintf(v->greeting, sizeof(v->greeting), "%s", line + 9);
	}
	fclose(f);
	if (v->name[0])
		nvoices++;
}

static void walk(const char *dir)
{
	DIR *d = opendir(dir);
	if (d == NULL)
		return;
	ndirs++;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char p[512];
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		struct stat st;
		if (stat(p, &st) != 0)
			continue;
		if (S_ISDIR(st.st_mode))
			walk(p);
		else if (S_ISREG(st.st_mode))
			load(p);
	}
	closedir(d);
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct voice *)a)->name, ((const struct voice *)b)->name);
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	const char *want = strchr(url + 1, '/');
	char out[8192];
	if (want == NULL || want[1] == 0) {
		int n = snprintf(out, sizeof(out), "%d voices in %d directories (%ld bytes):", nvoices, ndirs, nbytes);
		for (int i = 0; i < nvoices && n < (int)sizeof(out); i++)
			n += snprintf(out + n, sizeof(out) - n, " %s", voices[i].name);
		snprintf(out + n, sizeof(out) - n, "\n");
		backend_response_str(200, "text/plain", out);
		return;
	}
	for (int i = 0; i < nvoices; i++) {
		if (strcmp(voices[i].name, want + 1) == 0) {
			snprintf(out, sizeof(out), "%s (%s)\n", voices[i].greeting, voices[i].path);
			backend_response_str(200, "text/plain", out);
			return;
		}
	}
	backend_response_str(404, "text/plain", "no such voice\n");
}

int main(int argc, char **argv)
{
	const char *root = argc > 1 ? argv[1] : "/data";
	char lang[512];
	snprintf(lang, sizeof(lang), "%s/lang", root);
	walk(lang);
	qsort(voices, nvoices, sizeof(voices[0]), by_name);
	if (nvoices == 0) {
		fprintf(stderr, "datatree: no voices below %s\n", lang);
		return 1;
	}
	set_backend_get(on_get);
	wait_for_requests();
}
