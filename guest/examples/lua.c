/* lua.c: a Lua 5.4 handler (Debian's liblua5.4-dev, linked statically). main() loads the
   script named by argv[1] (default /app/handler.lua, a path the configuration lists in
   allowed_paths) and freezes with it loaded; every request calls the script's global
   handle(url), which returns the body and, optionally, the content type.

   "lua": { "filename": "example_lua", "main_arguments": ["/app/handler.lua"],
            "allowed_paths": [{ "virtual": "/app", "real": "/path/to/guest/examples/lua" }] } */
#include "kvm_api.h"
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static lua_State *L;

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	lua_getglobal(L, "handle");
	lua_pushstring(L, url);
	if (lua_pcall(L, 1, 2, 0) != LUA_OK) {
		backend_response_str(500, "text/plain", lua_tostring(L, -1));
		return;
	}
	size_t n = 0;
	const char *body = lua_tolstring(L, -2, &n);
	const char *ctype = lua_isstring(L, -1) ? lua_tostring(L, -1) : "text/plain";
	if (body == NULL) {
		backend_response_str(500, "text/plain", "handle() returned no string");
		return;
	}
	backend_response(200, ctype, strlen(ctype), body, n);
}

int main(int argc, char **argv)
{
	const char *script = argc > 1 ? argv[1] : "/app/handler.lua";
	L = luaL_newstate();
	luaL_openlibs(L);
	/* SCRIPT_DIR: where the script is, for the files it reads next to it. */
	char dir[512];
	snprintf(dir, sizeof(dir), "%s", script);
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = 0;
	lua_pushstring(L, slash ? dir : ".");
	lua_setglobal(L, "SCRIPT_DIR");
	if (luaL_dofile(L, script) != LUA_OK) {
		fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
		return 1;
	}
	if (IS_LINUX_MAIN()) {
		/* Natively, BENCH_CALLS=N times N calls of handle() (docs/BENCHMARKS.md). */
		const char *calls = getenv("BENCH_CALLS");
		const long n = calls ? atol(calls) : 0;
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		for (long i = 0; i < n; i++) {
			lua_getglobal(L, "handle");
			lua_pushstring(L, "/lua/a/b?x=1");
			lua_pcall(L, 1, 2, 0);
			lua_pop(L, 2);
		}
		clock_gettime(CLOCK_MONOTONIC, &b);
		if (n > 0)
			printf("lua: %.2f us per call (native, %ld calls)\n",
			       ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / n, n);
		else
			puts("lua: script loaded; run me inside edgevm to serve it");
		return 0;
	}
	set_backend_get(on_get);
	wait_for_requests();
}
