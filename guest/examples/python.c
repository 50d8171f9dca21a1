/* python.c: CPython 3.11 embedded (Debian's libpython3.11-dev, the static libpython3.11.a).
   main() starts the interpreter with its standard library read from /usr/lib/python3.11
   through allowed_paths, imports the module named by argv[1] (default "handler") from
   argv[2] (default /app), and freezes; every request calls the module's handle(url), which
   returns the body as a str (or bytes).

   "python": { "filename": "example_python", "max_memory": 256,
               "allowed_paths": ["/usr/lib/python3.11",
                                 { "virtual": "/app", "real": "/path/to/guest/examples/python" }] } */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kvm_api.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static PyObject *handle;

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	PyObject *r = PyObject_CallFunction(handle, "s", url);
	if (r == NULL) {
		PyErr_Print();
		backend_response_str(500, "text/plain", "handle() raised an exception");
		return;
	}
	Py_ssize_t n = 0;
	const char *body = PyUnicode_Check(r) ? PyUnicode_AsUTF8AndSize(r, &n) : NULL;
	if (body == NULL && PyBytes_Check(r)) {
		body = PyBytes_AS_STRING(r);
		n = PyBytes_GET_SIZE(r);
	}
	if (body == NULL) {
		PyErr_Clear();
		backend_response_str(500, "text/plain", "handle() returned neither str nor bytes");
		return;
	}
	backend_response(200, "text/plain", 10, body, (size_t)n);
}

int main(int argc, char **argv)
{
	const char *module = argc > 1 ? argv[1] : "handler";
	const char *dir = argc > 2 ? argv[2] : "/app";
	PyConfig c;
	PyConfig_InitIsolatedConfig(&c);
	PyConfig_SetString(&c, &c.home, L"/usr");
	c.site_import = 0;
	c.write_bytecode = 0;
	PyStatus s = Py_InitializeFromConfig(&c);
	PyConfig_Clear(&c);
	if (PyStatus_Exception(s))
		Py_ExitStatusException(s);
	PyObject *path = PySys_GetObject("path");
	PyObject *d = PyUnicode_FromString(dir);
	PyList_Insert(path, 0, d);
	Py_DECREF(d);
	PyObject *m = PyImport_ImportModule(module);
	handle = m ? PyObject_GetAttrString(m, "handle") : NULL;
	if (handle == NULL) {
		PyErr_Print();
		return 1;
	}
	if (IS_LINUX_MAIN()) {
		/* Natively, BENCH_CALLS=N times N calls of handle() (docs/BENCHMARKS.md). */
		const char *calls = getenv("BENCH_CALLS");
		const long n = calls ? atol(calls) : 0;
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		for (long i = 0; i < n; i++)
			Py_XDECREF(PyObject_CallFunction(handle, "s", "/python/a/b?x=1"));
		clock_gettime(CLOCK_MONOTONIC, &b);
		if (n > 0)
			printf("python: %.2f us per call (native, %ld calls)\n",
			       ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / n, n);
		else
			puts("python: handler imported; run me inside edgevm to serve it");
		return 0;
	}
	set_backend_get(on_get);
	wait_for_requests();
}
