/* Direct reads of a dict entry (a mirror of the CPython dict layout), included by _core.pyx. */
#include <Python.h>
#ifndef ENG_CORE_DICT_H
#define ENG_CORE_DICT_H

#include <string.h>

/* The inline cache's entry read. PyDict_Next is an out-of-line call that
   costs ~100 instructions; reading entry p of a combined table is a few
   loads. The mirror of CPython's dict-keys header below is the layout of
   CPython 3.11-3.13 (non-free-threaded); eng_dict_layout_check() verifies
   it against PyDict_Next at import and otherwise PyDict_Next is used. */
typedef struct {
    Py_ssize_t refcnt;
    uint8_t log2_size, log2_index_bytes, kind;
    uint32_t version;
    Py_ssize_t usable, nentries;
    char indices[];
} eng_dict_keys;
typedef struct { PyObject *key, *value; } eng_unicode_entry;
typedef struct { Py_hash_t hash; PyObject *key, *value; } eng_general_entry;
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define ENG_DICT_MIRROR 1
#else
#define ENG_DICT_MIRROR 0
#endif
static int eng_dict_mirror_ok = 0;

static inline PyObject* eng_dict_slot_direct(PyObject* d, Py_ssize_t p, PyObject* key) {
    PyDictObject* mp = (PyDictObject*)d;
    eng_dict_keys* k = (eng_dict_keys*)mp->ma_keys;
    const char* entries;
    if (p >= k->nentries) return NULL;
    entries = k->indices + ((size_t)1 << k->log2_index_bytes);
    if (k->kind == 0) {   /* DICT_KEYS_GENERAL */
        const eng_general_entry* e = (const eng_general_entry*)entries + p;
        return e->key == key ? e->value : NULL;
    } else {
        const eng_unicode_entry* e = (const eng_unicode_entry*)entries + p;
        return e->key == key ? e->value : NULL;
    }
}

/* The value at entry position p if that entry's key is `key` (the very
   object), else NULL. */
static inline PyObject* eng_dict_slot(PyObject* d, Py_ssize_t p, PyObject* key) {
    PyObject *k, *v;
#if ENG_DICT_MIRROR
    if (eng_dict_mirror_ok && ((PyDictObject*)d)->ma_values == NULL)
        return eng_dict_slot_direct(d, p, key);
#endif
    if (PyDict_Next(d, &p, &k, &v) && k == key) return v;
    return NULL;
}

/* Compare the mirror with PyDict_Next on every entry of d. */
static int eng_dict_layout_matches(PyObject* d) {
#if ENG_DICT_MIRROR
    Py_ssize_t pos = 0, p;
    PyObject *k, *v;
    if (((PyDictObject*)d)->ma_values != NULL) return 0;
    while (PyDict_Next(d, &pos, &k, &v)) {
        p = pos - 1;
        if (eng_dict_slot_direct(d, p, k) != v) return 0;
    }
    return 1;
#else
    return 0;
#endif
}

#endif
