/* The scan's records, compiled: ocrd.fs.scan's optional fast path (ocrd/fs/records.py).
 *
 * For names a directory listing gave (os.scandir, in its order), what the Python path does
 * per name: encode it as os.fsencode does, fstatat it without following a link, and for a
 * regular file or a symbolic link build its FileEntry (path, size, mtime, atime, ctime, dev,
 * ino, is_link, uid) with the values os.stat_result would hold. The fstatat calls are made
 * with the GIL released, all of a batch together. A name gone meanwhile (ENOENT) is left out,
 * as the Python path leaves it; any other error is returned with its name and errno.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* A time as Python computes st_mtime and friends (sec + nsec * 1e-9,
 * Modules/posixmodule.c). Built with -ffp-contract=off: no fused multiply-add. */
static double seconds(const struct timespec *t) {
    return (double)t->tv_sec + (double)t->tv_nsec * 1e-9;
}

/* uid as os.stat_result holds it (Modules/posixmodule.c, _PyLong_FromUid). */
static PyObject *from_uid(uid_t uid) {
    if (uid == (uid_t)-1)
        return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLong((unsigned long)uid);
}

static PyObject *entry(PyTypeObject *type, PyObject *path, const struct stat *st) {
    PyObject *items[9] = {
        path,
        PyLong_FromLongLong((long long)st->st_size),
        PyFloat_FromDouble(seconds(&st->st_mtim)),
        PyFloat_FromDouble(seconds(&st->st_atim)),
        PyFloat_FromDouble(seconds(&st->st_ctim)),
        PyLong_FromUnsignedLongLong((unsigned long long)st->st_dev),
        PyLong_FromUnsignedLongLong((unsigned long long)st->st_ino),
        PyBool_FromLong(S_ISLNK(st->st_mode)),
        from_uid(st->st_uid),
    };
    Py_INCREF(path);
    PyObject *rec = NULL;
    int i;
    for (i = 0; i < 9 && items[i] != NULL; i++)
        ;
    if (i == 9)
        rec = type->tp_alloc(type, 9);
    if (rec == NULL) {
        for (i = 0; i < 9; i++)
            Py_XDECREF(items[i]);
        return NULL;
    }
    for (i = 0; i < 9; i++)
        PyTuple_SET_ITEM(rec, i, items[i]); /* the record owns them now */
    return rec;
}

static PyObject *records(PyObject *self, PyObject *args) {
    int dir_fd;
    PyObject *prefix, *names, *type_obj;
    if (!PyArg_ParseTuple(args, "iO!O!O!", &dir_fd, &PyBytes_Type, &prefix, &PyList_Type, &names,
                          &PyType_Type, &type_obj))
        return NULL;
    PyTypeObject *type = (PyTypeObject *)type_obj;
    if (!PyType_IsSubtype(type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "records: the record type must be a tuple subclass");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(names);
    PyObject *encoded = PyList_New(n); /* holds the bytes the C strings below point into */
    struct stat *sts = calloc(n ? (size_t)n : 1, sizeof(struct stat));
    int *errs = calloc(n ? (size_t)n : 1, sizeof(int));
    const char **cnames = calloc(n ? (size_t)n : 1, sizeof(char *));
    PyObject *files = NULL, *errors = NULL, *result = NULL;
    if (encoded == NULL || sts == NULL || errs == NULL || cnames == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyList_GET_ITEM(names, i);
        PyObject *b = PyUnicode_Check(name) ? PyUnicode_EncodeFSDefault(name) : NULL;
        if (b == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "records: names must be str");
            goto done;
        }
        PyList_SET_ITEM(encoded, i, b);
        cnames[i] = PyBytes_AS_STRING(b);
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        errs[i] = fstatat(dir_fd, cnames[i], &sts[i], AT_SYMLINK_NOFOLLOW) == 0 ? 0 : errno;
    Py_END_ALLOW_THREADS
    files = PyList_New(0);
    errors = PyList_New(0);
    if (files == NULL || errors == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (errs[i] == ENOENT)
            continue; /* gone between the listing and the stat: not ours to judge now */
        if (errs[i] != 0) {
            PyObject *e = Py_BuildValue("Oi", PyList_GET_ITEM(names, i), errs[i]);
            if (e == NULL || PyList_Append(errors, e) != 0) {
                Py_XDECREF(e);
                goto done;
            }
            Py_DECREF(e);
            continue;
        }
        if (!S_ISREG(sts[i].st_mode) && !S_ISLNK(sts[i].st_mode))
            continue;
        PyObject *path = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(prefix) +
                                                             PyBytes_GET_SIZE(PyList_GET_ITEM(encoded, i)));
        if (path == NULL)
            goto done;
        char *out = PyBytes_AS_STRING(path);
        memcpy(out, PyBytes_AS_STRING(prefix), (size_t)PyBytes_GET_SIZE(prefix));
        memcpy(out + PyBytes_GET_SIZE(prefix), cnames[i],
               (size_t)PyBytes_GET_SIZE(PyList_GET_ITEM(encoded, i)));
        PyObject *rec = entry(type, path, &sts[i]);
        Py_DECREF(path);
        if (rec == NULL || PyList_Append(files, rec) != 0) {
            Py_XDECREF(rec);
            goto done;
        }
        Py_DECREF(rec);
    }
    result = Py_BuildValue("OO", files, errors);
done:
    Py_XDECREF(files);
    Py_XDECREF(errors);
    Py_XDECREF(encoded);
    free(sts);
    free(errs);
    free(cnames);
    return result;
}

static PyMethodDef methods[] = {
    {"records", records, METH_VARARGS,
     "records(dir_fd, prefix, names, record_type) -> (records, [(name, errno)]): see "
     "ocrd/fs/records.py"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ocrd.fs._records", "The scan's records, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__records(void) { return PyModule_Create(&module); }
