/* hyperion._seccomp: installs a seccomp filter (filter mode) built with libseccomp.
 *
 * One function, load(rules, default_errno): the allowlist and its per-call answers are
 * policy and live in Python (hyperion.slowpath.confinement); this only turns them into a filter
 * for the native architecture and loads it. libseccomp resolves the names (a name the
 * architecture lacks, e.g. "open" on arm64, is a pseudo-syscall it skips), builds the
 * architecture check and the BPF program. Loaded with SCMP_FLTATR_CTL_TSYNC (every thread) and a foreign-ABI
 * call ending the process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <seccomp.h>
#include <string.h>

/* One rule: (name, errno or None to allow, None or (argument index, mask, value)); the
 * condition holds when (argument & mask) == value. */
static int add_rule(scmp_filter_ctx ctx, PyObject *rule)
{
	const char *name;
	PyObject *answer, *cond;
	unsigned int arg = 0;
	unsigned long long mask = 0, value = 0;
	uint32_t action;
	int nr, rc;

	if (!PyArg_ParseTuple(rule, "sOO;a rule is (name, errno or None, None or (arg, mask, value))", &name,
			      &answer, &cond))
		return -1;
	nr = seccomp_syscall_resolve_name(name);
	if (nr == __NR_SCMP_ERROR) {
		PyErr_Format(PyExc_ValueError, "seccomp: unknown system call %R", PyTuple_GET_ITEM(rule, 0));
		return -1;
	}
	if (answer == Py_None) {
		action = SCMP_ACT_ALLOW;
	} else {
		long e = PyLong_AsLong(answer);

		if (e == -1 && PyErr_Occurred())
			return -1;
		if (e < 0 || e > 4095) {
			PyErr_Format(PyExc_ValueError, "seccomp: errno %ld for %s out of range", e, name);
			return -1;
		}
		action = SCMP_ACT_ERRNO((uint32_t)e);
	}
	if (cond == Py_None) {
		rc = seccomp_rule_add(ctx, action, nr, 0);
	} else {
		if (!PyArg_ParseTuple(cond, "IKK;a condition is (arg, mask, value)", &arg, &mask, &value))
			return -1;
		if (arg > 5) {
			PyErr_Format(PyExc_ValueError, "seccomp: %s has no argument %u", name, arg);
			return -1;
		}
		rc = seccomp_rule_add(ctx, action, nr, 1, SCMP_CMP(arg, SCMP_CMP_MASKED_EQ, mask, value));
	}
	if (rc) {
		errno = -rc;
		PyErr_Format(PyExc_OSError, "seccomp: rule for %s: %s", name, strerror(-rc));
		return -1;
	}
	return 0;
}

static PyObject *load(PyObject *module, PyObject *args)
{
	PyObject *rules, *seq, *default_errno;
	scmp_filter_ctx ctx;
	uint32_t fallback;
	int rc;

	if (!PyArg_ParseTuple(args, "OO", &rules, &default_errno))
		return NULL;
	if (default_errno == Py_None) {
		fallback = SCMP_ACT_LOG; /* tracing an allowlist: allowed, and logged by the kernel */
	} else {
		long e = PyLong_AsLong(default_errno);

		if (e == -1 && PyErr_Occurred())
			return NULL;
		if (e <= 0 || e > 4095)
			return PyErr_Format(PyExc_ValueError, "seccomp: default errno %ld out of range", e);
		fallback = SCMP_ACT_ERRNO((uint32_t)e);
	}
	seq = PySequence_Fast(rules, "rules must be a sequence");
	if (!seq)
		return NULL;
	ctx = seccomp_init(fallback);
	if (!ctx) {
		Py_DECREF(seq);
		return PyErr_NoMemory();
	}
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
		if (add_rule(ctx, PySequence_Fast_GET_ITEM(seq, i))) {
			seccomp_release(ctx);
			Py_DECREF(seq);
			return NULL;
		}
	}
	Py_DECREF(seq);
	/* A call through a foreign ABI (int 0x80 on x86_64) is never a path of ours: the process
	 * ends, not just the thread (libseccomp's default). */
	rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
	/* Every thread, should there be any: a filter is per thread otherwise. */
	if (!rc)
		rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
	if (!rc)
		rc = seccomp_load(ctx);
	seccomp_release(ctx);
	if (rc) {
		errno = -rc;
		return PyErr_Format(PyExc_OSError, "seccomp: loading the filter: %s", strerror(-rc));
	}
	Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
	{"load", load, METH_VARARGS,
	 "load(rules, default_errno): install a seccomp filter; rules are (name, errno or None to allow, "
	 "None or (arg, mask, value)); every other call fails with default_errno (None: allowed and logged)."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
	PyModuleDef_HEAD_INIT, "hyperion._seccomp", "seccomp filters through libseccomp.", -1, methods,
};

PyMODINIT_FUNC PyInit__seccomp(void)
{
	return PyModule_Create(&module_def);
}
