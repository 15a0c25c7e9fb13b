/* Hot-path helpers of the rule core, included by _core.pyx. */
#include <Python.h>
#ifndef ENG_CORE_HELPERS_H
#define ENG_CORE_HELPERS_H

#include <string.h>

/* Hot-path helpers. Dict lookups with str keys cannot fail, so the
   variant that skips saving/restoring the error indicator is safe. */
static inline PyObject* eng_dict_get(PyObject* d, PyObject* key) {
    PyObject* r = PyDict_GetItemWithError(d, key);
    if (r == NULL && PyErr_Occurred()) PyErr_Clear();
    return r;
}
/* Equality of two exact-or-subclass str objects without the generic
   rich-compare machinery. */
static inline int eng_str_eq(PyObject* a, PyObject* b) {
    Py_ssize_t n;
    int k;
    if (a == b) return 1;
    n = PyUnicode_GET_LENGTH(a);
    if (n != PyUnicode_GET_LENGTH(b)) return 0;
    k = PyUnicode_KIND(a);
    if (k != PyUnicode_KIND(b)) return 0;
    return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * k) == 0;
}

#endif
