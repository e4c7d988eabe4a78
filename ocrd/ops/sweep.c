/* The deleter's common case, compiled: ocrd.ops.sweep's optional fast path.
 *
 * It makes exactly the system calls the Python path makes for a file that is ours to open,
 * leased, and unchanged (ocrd/ops/quick.py, then OneBehind.take in ocrd/ops/onebehind.py), in
 * the same order, for one file, with the GIL released. It decides nothing else: where the
 * file is not that case it stops before doing anything to it (STOP_BEFORE), and the Python
 * path takes the file from the start. The one step that cannot be undone, the rename over the
 * private name, is followed by its check; if that check does not pass (STOP_AFTER), the
 * Python path finishes the file (OneBehind.landed).
 *
 * Per file: openat(O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC|O_NOCTTY), fstat (still the planned
 * regular file: device, inode, size, mtime; ours, for a leftover of an interrupted deletion),
 * F_SETLEASE F_WRLCK, then for the file waiting under the private name: F_GETLEASE (nobody is
 * opening it), fstatat of the private name (still that very file), renameat of this file over
 * it (its deletion), close of its fd; then fstatat of the private name (this file landed).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define FILE_FLAGS (O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)

enum { TAKEN = 0, STOP_BEFORE = 1, STOP_AFTER = 2 };

/* st_mtime as Python computes it (sec + nsec * 1e-9, Modules/posixmodule.c), so the planned
 * float compares equal exactly when Python's would. Built with -ffp-contract=off. */
static double mtime_of(const struct stat *st) {
    return (double)st->st_mtim.tv_sec + (double)st->st_mtim.tv_nsec * 1e-9;
}

static PyObject *step(PyObject *self, PyObject *args) {
    int parent, dir_fd, wfd, ours_only;
    unsigned long long dev, wino, ino;
    long long size;
    double mtime;
    unsigned int euid;
    const char *private_name, *name;
    if (!PyArg_ParseTuple(args, "iiyiKKIyKLdp", &parent, &dir_fd, &private_name, &wfd, &dev,
                          &wino, &euid, &name, &ino, &size, &mtime, &ours_only))
        return NULL;
    int stop = TAKEN;
    int fd;
    struct stat st, there;

    Py_BEGIN_ALLOW_THREADS
    fd = openat(parent, name, FILE_FLAGS);
    if (fd < 0) {
        stop = STOP_BEFORE;
    } else if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
               (unsigned long long)st.st_dev != dev || (unsigned long long)st.st_ino != ino ||
               (long long)st.st_size != size || mtime_of(&st) != mtime ||
               (ours_only && st.st_uid != euid) || fcntl(fd, F_SETLEASE, F_WRLCK) != 0 ||
               fcntl(wfd, F_GETLEASE) != F_WRLCK ||
               fstatat(dir_fd, private_name, &there, AT_SYMLINK_NOFOLLOW) != 0 ||
               (unsigned long long)there.st_dev != dev ||
               (unsigned long long)there.st_ino != wino ||
               renameat(parent, name, dir_fd, private_name) != 0) {
        close(fd); /* lets go of the lease, if one was taken: nothing was done to the file */
        fd = -1;
        stop = STOP_BEFORE;
    } else {
        /* The waiting file's last name here is gone: closing our fd frees it. */
        close(wfd);
        if (fstatat(dir_fd, private_name, &there, AT_SYMLINK_NOFOLLOW) != 0 ||
            (unsigned long long)there.st_dev != dev ||
            (unsigned long long)there.st_ino != (unsigned long long)st.st_ino)
            stop = STOP_AFTER;
    }
    Py_END_ALLOW_THREADS

    return Py_BuildValue("ii", stop, fd);
}

static PyMethodDef methods[] = {
    {"step", step, METH_VARARGS,
     "step(parent, dir_fd, private, waiting_fd, dev, waiting_ino, euid, name, ino, size, "
     "mtime, ours_only) -> (how, fd): see ocrd/ops/sweep.py"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ocrd.ops._sweep", "The deleter's common case, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__sweep(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "TAKEN", TAKEN) != 0 ||
                      PyModule_AddIntConstant(m, "STOP_BEFORE", STOP_BEFORE) != 0 ||
                      PyModule_AddIntConstant(m, "STOP_AFTER", STOP_AFTER) != 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
