/* tierstream._native: the per-event hot path of the aggregation, in C.
 *
 * Three functions, each the C twin of a pure-Python reference that stays in
 * the package (used when this module is not built, or with TIERSTREAM_NATIVE=0)
 * and that the tests hold it equal to:
 *
 *   check_batch(plan, objs, tail) -> list of the indices of invalid objects
 *       twin of schemas.fastcheck.compile_check(...) applied to each object.
 *       `plan` comes from compile_plan(schemas.fastcheck.native_plan(record)).
 *       tail 1 adds the MEMORY_TIER_ACCESS cross-field rules
 *       (schemas/access.py, _ACCESS_TAIL).
 *   group(objs) -> (events, event_keys, attempt_keys, tier_us, total_us, queries, texts)
 *       twin of processors/aggregate/batch.py, _group_batch_py.
 *   hist_record(counts, values, mask, shift, half_mag, half, exact, highest)
 *       -> (n, lo, hi, sum): twin of LatencyHistogram.record_us's Python loop
 *       (processors/aggregate/latency.py): clamps each value to 0..highest and
 *       adds one to its HdrHistogram counts-array bucket, in place.
 *
 * Only valid objects reach group() (callers check first); it still raises a
 * Python error instead of crashing if one is not.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

enum { K_STRING, K_NUMBER, K_INTEGER, K_BOOLEAN, K_MAP, K_RECORD, K_LIST, K_OBJECT, K_END };

typedef struct RecordPlan RecordPlan;

typedef struct {
    PyObject *name;         /* owned */
    int kind, required, nullable;
    Py_ssize_t max_length;  /* -1: none */
    Py_ssize_t max_entries; /* -1: none */
    PyObject *enum_set;     /* owned or NULL */
    PyObject *minimum;      /* owned or NULL */
    PyObject *maximum;      /* owned or NULL */
    /* the bounds as doubles, when a float compared with them in C gives the
       same answer as Python's exact comparison (float or small-int bound) */
    int min_d_ok, max_d_ok;
    double min_d, max_d;
    PyObject *cnst;         /* owned or NULL */
    RecordPlan *values;     /* owned or NULL */
} FieldPlan;

struct RecordPlan {
    int additional;
    PyObject *names; /* owned frozenset */
    Py_ssize_t n;
    FieldPlan *fields;
};

static void free_record(RecordPlan *r);

static void free_field(FieldPlan *f) {
    Py_XDECREF(f->name);
    Py_XDECREF(f->enum_set);
    Py_XDECREF(f->minimum);
    Py_XDECREF(f->maximum);
    Py_XDECREF(f->cnst);
    if (f->values) free_record(f->values);
}

static void free_record(RecordPlan *r) {
    if (!r) return;
    if (r->fields) {
        for (Py_ssize_t i = 0; i < r->n; i++) free_field(&r->fields[i]);
        PyMem_Free(r->fields);
    }
    Py_XDECREF(r->names);
    PyMem_Free(r);
}

static PyObject *none_to_null(PyObject *o) { return o == Py_None ? NULL : o; }

/* A bound usable as a double: a float, or an int of at most 2**53 in size. */
static int bound_double(PyObject *b, double *out) {
    if (!b) return 0;
    if (PyFloat_CheckExact(b)) {
        *out = PyFloat_AS_DOUBLE(b);
        return 1;
    }
    if (PyLong_CheckExact(b)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(b, &overflow);
        if (overflow || v > (1LL << 53) || v < -(1LL << 53)) return 0;
        *out = (double)v;
        return 1;
    }
    return 0;
}

static RecordPlan *build_record(PyObject *t);

static int build_field(FieldPlan *f, PyObject *t) {
    /* (name, kind, required, nullable, max_length, enum, minimum, maximum, const,
        values, max_entries) */
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 11) {
        PyErr_SetString(PyExc_TypeError, "field plan must be an 11-tuple");
        return -1;
    }
    memset(f, 0, sizeof(*f));
    f->name = PyTuple_GET_ITEM(t, 0);
    if (!PyUnicode_Check(f->name)) {
        f->name = NULL;
        PyErr_SetString(PyExc_TypeError, "field name must be a str");
        return -1;
    }
    Py_INCREF(f->name);
    PyUnicode_InternInPlace(&f->name);
    f->kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 1));
    if (f->kind < 0 || f->kind >= K_END) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "unknown field kind");
        return -1;
    }
    f->required = PyObject_IsTrue(PyTuple_GET_ITEM(t, 2));
    f->nullable = PyObject_IsTrue(PyTuple_GET_ITEM(t, 3));
    PyObject *ml = PyTuple_GET_ITEM(t, 4);
    f->max_length = ml == Py_None ? -1 : PyLong_AsSsize_t(ml);
    f->enum_set = none_to_null(PyTuple_GET_ITEM(t, 5));
    if (f->enum_set && !PyFrozenSet_Check(f->enum_set)) {
        f->enum_set = NULL;
        PyErr_SetString(PyExc_TypeError, "enum must be a frozenset");
        return -1;
    }
    Py_XINCREF(f->enum_set);
    f->minimum = none_to_null(PyTuple_GET_ITEM(t, 6));
    Py_XINCREF(f->minimum);
    f->maximum = none_to_null(PyTuple_GET_ITEM(t, 7));
    Py_XINCREF(f->maximum);
    f->min_d_ok = bound_double(f->minimum, &f->min_d);
    f->max_d_ok = bound_double(f->maximum, &f->max_d);
    f->cnst = none_to_null(PyTuple_GET_ITEM(t, 8));
    Py_XINCREF(f->cnst);
    PyObject *values = PyTuple_GET_ITEM(t, 9);
    if (values != Py_None) {
        f->values = build_record(values);
        if (!f->values) return -1;
    }
    PyObject *me = PyTuple_GET_ITEM(t, 10);
    f->max_entries = me == Py_None ? -1 : PyLong_AsSsize_t(me);
    if (PyErr_Occurred()) return -1;
    if ((f->kind == K_MAP || f->kind == K_RECORD || f->kind == K_LIST) && !f->values) {
        PyErr_SetString(PyExc_ValueError, "map, record and list fields need a values plan");
        return -1;
    }
    return 0;
}

static RecordPlan *build_record(PyObject *t) {
    /* (additional, names, fields) */
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3 || !PyTuple_Check(PyTuple_GET_ITEM(t, 2)) ||
        !PyFrozenSet_Check(PyTuple_GET_ITEM(t, 1))) {
        PyErr_SetString(PyExc_TypeError,
                        "record plan must be (additional, frozenset of names, tuple of fields)");
        return NULL;
    }
    RecordPlan *r = PyMem_Calloc(1, sizeof(RecordPlan));
    if (!r) return (RecordPlan *)PyErr_NoMemory();
    r->additional = PyObject_IsTrue(PyTuple_GET_ITEM(t, 0));
    r->names = PyTuple_GET_ITEM(t, 1);
    Py_INCREF(r->names);
    PyObject *fields = PyTuple_GET_ITEM(t, 2);
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    r->fields = PyMem_Calloc(n ? n : 1, sizeof(FieldPlan));
    if (!r->fields) {
        free_record(r);
        return (RecordPlan *)PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        r->n = i + 1;
        if (build_field(&r->fields[i], PyTuple_GET_ITEM(fields, i)) < 0) {
            free_record(r);
            return NULL;
        }
    }
    r->n = n;
    return r;
}

#define PLAN_CAPSULE "tierstream._native.plan"

static void plan_destructor(PyObject *capsule) {
    free_record((RecordPlan *)PyCapsule_GetPointer(capsule, PLAN_CAPSULE));
}

static PyObject *compile_plan(PyObject *self, PyObject *arg) {
    RecordPlan *r = build_record(arg);
    if (!r) return NULL;
    PyObject *cap = PyCapsule_New(r, PLAN_CAPSULE, plan_destructor);
    if (!cap) free_record(r);
    return cap;
}

/* ---- checking: 1 valid, 0 invalid, -1 Python error ------------------------ */

static int check_record(const RecordPlan *r, PyObject *obj);

/* value < bound (op Py_LT) or value > bound (Py_GT), as Python compares them */
static int out_of_bound(PyObject *v, PyObject *bound, int d_ok, double d, int op) {
    if (d_ok && PyFloat_CheckExact(v)) {
        double x = PyFloat_AS_DOUBLE(v);
        return op == Py_LT ? x < d : x > d;
    }
    return PyObject_RichCompareBool(v, bound, op);
}

static int check_value(const FieldPlan *f, PyObject *v) {
    int r;
    switch (f->kind) {
    case K_STRING:
        if (!PyUnicode_CheckExact(v)) return 0;
        if (f->max_length >= 0 && PyUnicode_GET_LENGTH(v) > f->max_length) return 0;
        if (f->enum_set) {
            r = PySet_Contains(f->enum_set, v);
            if (r <= 0) return r;
        }
        break;
    case K_NUMBER:
    case K_INTEGER:
        if (PyFloat_CheckExact(v)) {
            if (f->kind == K_INTEGER) return 0;
            if (!isfinite(PyFloat_AS_DOUBLE(v))) return 0;
        } else if (!PyLong_CheckExact(v)) {
            return 0; /* bool is not an exact int */
        }
        if (f->minimum) {
            r = out_of_bound(v, f->minimum, f->min_d_ok, f->min_d, Py_LT);
            if (r != 0) return r < 0 ? -1 : 0;
        }
        if (f->maximum) {
            r = out_of_bound(v, f->maximum, f->max_d_ok, f->max_d, Py_GT);
            if (r != 0) return r < 0 ? -1 : 0;
        }
        break;
    case K_BOOLEAN:
        if (!PyBool_Check(v)) return 0;
        break;
    case K_MAP: {
        if (!PyDict_CheckExact(v)) return 0;
        if (f->max_entries >= 0 && PyDict_GET_SIZE(v) > f->max_entries) return 0;
        Py_ssize_t pos = 0;
        PyObject *k, *item;
        while (PyDict_Next(v, &pos, &k, &item)) {
            r = PyObject_IsTrue(k);
            if (r <= 0) return r;
            r = check_record(f->values, item);
            if (r <= 0) return r;
        }
        break;
    }
    case K_RECORD:
        r = check_record(f->values, v);
        if (r <= 0) return r;
        break;
    case K_LIST: {
        if (!PyList_CheckExact(v)) return 0;
        Py_ssize_t n = PyList_GET_SIZE(v);
        if (f->max_entries >= 0 && n > f->max_entries) return 0;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(v); i++) {
            r = check_record(f->values, PyList_GET_ITEM(v, i));
            if (r <= 0) return r;
        }
        break;
    }
    case K_OBJECT:
        if (!PyDict_CheckExact(v)) return 0;
        break;
    }
    if (f->cnst) {
        if (Py_TYPE(v) != Py_TYPE(f->cnst)) return 0;
        r = PyObject_RichCompareBool(v, f->cnst, Py_NE);
        if (r != 0) return r < 0 ? -1 : 0;
    }
    return 1;
}

static int check_record(const RecordPlan *r, PyObject *obj) {
    if (!PyDict_CheckExact(obj)) return 0;
    if (!r->additional) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(obj, &pos, &k, &v)) {
            int in = PySet_Contains(r->names, k);
            if (in <= 0) {
                if (in < 0 && PyErr_ExceptionMatches(PyExc_TypeError)) {
                    PyErr_Clear(); /* an unhashable key is not a field name */
                    return 0;
                }
                return in;
            }
        }
    }
    for (Py_ssize_t i = 0; i < r->n; i++) {
        const FieldPlan *f = &r->fields[i];
        PyObject *v = PyDict_GetItemWithError(obj, f->name);
        if (!v) {
            if (PyErr_Occurred()) return -1;
            if (f->required) return 0;
            continue;
        }
        if (v == Py_None) {
            if (f->nullable) continue;
            return 0;
        }
        int ok = check_value(f, v);
        if (ok <= 0) return ok;
    }
    return 1;
}

/* Interned field names used by the access rules and by group(). */
static PyObject *s_tier_accessed, *s_tier_latencies, *s_operation, *s_cache_hit, *s_hit,
    *s_put, *s_error, *s_agent_id, *s_latency_ms, *s_total_latency_ms, *s_query_fingerprint,
    *s_query;

/* A required key of a dict that the checks (or the caller) guarantee. */
static PyObject *need(PyObject *d, PyObject *key) {
    if (!PyDict_CheckExact(d)) {
        PyErr_SetString(PyExc_TypeError, "expected a dict (an unvalidated event?)");
        return NULL;
    }
    PyObject *v = PyDict_GetItemWithError(d, key);
    if (!v && !PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
    return v;
}

static int str_eq(PyObject *a, PyObject *b) {
    if (a == b) return 1;
    if (!PyUnicode_CheckExact(a) || !PyUnicode_CheckExact(b)) return PyObject_RichCompareBool(a, b, Py_EQ);
    return PyUnicode_Compare(a, b) == 0;
}

/* The cross-field rules of schemas/access.py (run on an object whose fields passed). */
static int access_tail(PyObject *obj) {
    PyObject *served = need(obj, s_tier_accessed);
    PyObject *chain = served ? need(obj, s_tier_latencies) : NULL;
    PyObject *op = chain ? need(obj, s_operation) : NULL;
    PyObject *ch = op ? need(obj, s_cache_hit) : NULL;
    if (!ch) return -1;
    if (served != Py_None) {
        PyObject *attempt = PyDict_GetItemWithError(chain, served);
        if (!attempt) return PyErr_Occurred() ? -1 : 0;
        PyObject *hit = need(attempt, s_hit);
        if (!hit) return -1;
        int t = PyObject_IsTrue(hit);
        if (t <= 0) return t;
    }
    int is_put = str_eq(op, s_put);
    if (is_put < 0) return -1;
    int cache_hit = PyObject_IsTrue(ch);
    if (cache_hit < 0) return -1;
    if (is_put) return !cache_hit;
    int expect = 0;
    if (served != Py_None && PyDict_GET_SIZE(chain) > 0) {
        Py_ssize_t pos = 0;
        PyObject *first, *v;
        PyDict_Next(chain, &pos, &first, &v);
        expect = str_eq(served, first);
        if (expect < 0) return -1;
    }
    return cache_hit == expect;
}

static PyObject *check_batch(PyObject *self, PyObject *args) {
    PyObject *cap, *objs;
    int tail;
    if (!PyArg_ParseTuple(args, "OO!i", &cap, &PyList_Type, &objs, &tail)) return NULL;
    RecordPlan *plan = PyCapsule_GetPointer(cap, PLAN_CAPSULE);
    if (!plan) return NULL;
    PyObject *bad = PyList_New(0);
    if (!bad) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objs); i++) {
        PyObject *obj = PyList_GET_ITEM(objs, i);
        int ok = check_record(plan, obj);
        if (ok > 0 && tail == 1) {
            ok = access_tail(obj);
            if (ok < 0 && PyErr_ExceptionMatches(PyExc_KeyError)) {
                PyErr_Clear();
                ok = 0;
            }
        }
        if (ok < 0) {
            Py_DECREF(bad);
            return NULL;
        }
        if (!ok) {
            PyObject *idx = PyLong_FromSsize_t(i);
            if (!idx || PyList_Append(bad, idx) < 0) {
                Py_XDECREF(idx);
                Py_DECREF(bad);
                return NULL;
            }
            Py_DECREF(idx);
        }
    }
    return bad;
}

/* ---- grouping ------------------------------------------------------------- */

/* d[key] += 1 (d[key] = 1 when absent); steals nothing */
static int count_key(PyObject *d, PyObject *key) {
    PyObject *cur = PyDict_GetItemWithError(d, key);
    PyObject *next;
    if (!cur) {
        if (PyErr_Occurred()) return -1;
        next = PyLong_FromLong(1);
    } else {
        long long c = PyLong_AsLongLong(cur);
        if (c == -1 && PyErr_Occurred()) return -1;
        next = PyLong_FromLongLong(c + 1);
    }
    if (!next) return -1;
    int rc = PyDict_SetItem(d, key, next);
    Py_DECREF(next);
    return rc;
}

/* int(ms * 1000.0 + 0.5) of a validated latency (a finite number 0 .. 3.6e6) */
static int to_us(PyObject *ms, long long *out) {
    double x = PyFloat_CheckExact(ms) ? PyFloat_AS_DOUBLE(ms) : PyFloat_AsDouble(ms);
    if (x == -1.0 && PyErr_Occurred()) return -1;
    x = x * 1000.0 + 0.5;
    if (!(x > -9.2e18 && x < 9.2e18)) {
        PyErr_SetString(PyExc_ValueError, "latency out of range (an unvalidated event?)");
        return -1;
    }
    *out = (long long)x;
    return 0;
}

/* list[i] += by, for a list of ints */
static int list_add(PyObject *lst, Py_ssize_t i, long long by) {
    long long c = PyLong_AsLongLong(PyList_GET_ITEM(lst, i));
    if (c == -1 && PyErr_Occurred()) return -1;
    PyObject *n = PyLong_FromLongLong(c + by);
    if (!n) return -1;
    return PyList_SetItem(lst, i, n); /* steals n, drops the old item */
}

static int append_ll(PyObject *lst, long long v) {
    PyObject *o = PyLong_FromLongLong(v);
    if (!o) return -1;
    int rc = PyList_Append(lst, o);
    Py_DECREF(o);
    return rc;
}

static int group_one(PyObject *ev, PyObject *ev_keys, PyObject *att_keys, PyObject *tier_us,
                     PyObject *total_us, PyObject *queries, PyObject *texts) {
    PyObject *chain = need(ev, s_tier_latencies);
    PyObject *served = chain ? need(ev, s_tier_accessed) : NULL;
    PyObject *op = served ? need(ev, s_operation) : NULL;
    PyObject *agent = op ? need(ev, s_agent_id) : NULL;
    if (!agent) return -1;
    if (!PyDict_CheckExact(chain)) {
        PyErr_SetString(PyExc_TypeError, "tier_latencies must be a dict");
        return -1;
    }
    int is_put = str_eq(op, s_put);
    if (is_put < 0) return -1;
    PyObject *put_flag = is_put ? Py_True : Py_False;
    int err = 0;
    Py_ssize_t pos = 0;
    PyObject *t, *a;
    while (PyDict_Next(chain, &pos, &t, &a)) {
        PyObject *hit = need(a, s_hit);
        if (!hit) return -1;
        PyObject *e = PyDict_GetItemWithError(a, s_error);
        if (!e && PyErr_Occurred()) return -1;
        int is_err = e != NULL && e != Py_None;
        err |= is_err;
        PyObject *key = PyTuple_Pack(4, t, put_flag, hit, is_err ? Py_True : Py_False);
        if (!key) return -1;
        int rc = count_key(att_keys, key);
        Py_DECREF(key);
        if (rc < 0) return -1;
        if (is_put) continue;
        PyObject *ms = need(a, s_latency_ms);
        long long us;
        if (!ms || to_us(ms, &us) < 0) return -1;
        PyObject *lst = PyDict_GetItemWithError(tier_us, t);
        if (!lst) {
            if (PyErr_Occurred()) return -1;
            lst = PyList_New(0);
            if (!lst) return -1;
            rc = PyDict_SetItem(tier_us, t, lst);
            Py_DECREF(lst); /* the dict holds it */
            if (rc < 0) return -1;
        }
        if (append_ll(lst, us) < 0) return -1;
    }
    PyObject *cache_hit = Py_False;
    if (!is_put) {
        cache_hit = need(ev, s_cache_hit);
        if (!cache_hit) return -1;
    }
    PyObject *key = PyTuple_Pack(5, agent, put_flag, served, cache_hit, err ? Py_True : Py_False);
    if (!key) return -1;
    int rc = count_key(ev_keys, key);
    Py_DECREF(key);
    if (rc < 0 || is_put) return rc;

    PyObject *total = need(ev, s_total_latency_ms);
    long long us;
    if (!total || to_us(total, &us) < 0 || append_ll(total_us, us) < 0) return -1;
    PyObject *fp = need(ev, s_query_fingerprint);
    if (!fp) return -1;
    key = PyTuple_Pack(2, fp, served);
    if (!key) return -1;
    PyObject *acc = PyDict_GetItemWithError(queries, key);
    if (acc) {
        rc = (PyList_CheckExact(acc) && PyList_GET_SIZE(acc) == 2) ? 0 : -1;
        if (rc < 0) PyErr_SetString(PyExc_TypeError, "corrupt query accumulator");
        else if (list_add(acc, 0, 1) < 0 || list_add(acc, 1, us) < 0) rc = -1;
    } else if (PyErr_Occurred()) {
        rc = -1;
    } else {
        acc = Py_BuildValue("[iL]", 1, us);
        rc = acc ? PyDict_SetItem(queries, key, acc) : -1;
        Py_XDECREF(acc);
    }
    Py_DECREF(key);
    if (rc < 0) return -1;
    PyObject *text = PyDict_GetItemWithError(ev, s_query);
    if (!text) return PyErr_Occurred() ? -1 : 0;
    if (text == Py_None) return 0;
    PyObject *cur = PyDict_GetItemWithError(texts, fp);
    if (!cur) {
        if (PyErr_Occurred()) return -1;
        return PyDict_SetItem(texts, fp, text);
    }
    int lt = PyObject_RichCompareBool(text, cur, Py_LT);
    if (lt < 0) return -1;
    return lt ? PyDict_SetItem(texts, fp, text) : 0;
}

static PyObject *group(PyObject *self, PyObject *objs) {
    if (!PyList_Check(objs)) {
        PyErr_SetString(PyExc_TypeError, "group() takes a list of events");
        return NULL;
    }
    PyObject *ev_keys = PyDict_New(), *att_keys = PyDict_New(), *tier_us = PyDict_New(),
             *total_us = PyList_New(0), *queries = PyDict_New(), *texts = PyDict_New();
    PyObject *out = NULL;
    if (!ev_keys || !att_keys || !tier_us || !total_us || !queries || !texts) goto done;
    Py_ssize_t n = PyList_GET_SIZE(objs);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objs); i++) {
        if (group_one(PyList_GET_ITEM(objs, i), ev_keys, att_keys, tier_us, total_us, queries,
                      texts) < 0)
            goto done;
    }
    out = Py_BuildValue("(nOOOOOO)", n, ev_keys, att_keys, tier_us, total_us, queries, texts);
done:
    Py_XDECREF(ev_keys);
    Py_XDECREF(att_keys);
    Py_XDECREF(tier_us);
    Py_XDECREF(total_us);
    Py_XDECREF(queries);
    Py_XDECREF(texts);
    return out;
}

/* ---- HDR recording --------------------------------------------------------- */

static PyObject *hist_record(PyObject *self, PyObject *args) {
    PyObject *counts, *values;
    unsigned long long mask;
    int shift, half_mag;
    long long half, exact, highest;
    if (!PyArg_ParseTuple(args, "OO!KiiLLL", &counts, &PyList_Type, &values, &mask, &shift,
                          &half_mag, &half, &exact, &highest))
        return NULL;
    if (mask == 0 || shift < 0 || shift > 63 || half_mag < 0 || half_mag > 62) {
        PyErr_SetString(PyExc_ValueError, "bad histogram parameters");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(counts, &view, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND) < 0)
        return NULL;
    const char *fmt = view.format ? view.format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    if (view.ndim != 1 || view.itemsize != 8 || (strcmp(fmt, "Q") && strcmp(fmt, "q") &&
                                                 strcmp(fmt, "L") && strcmp(fmt, "l"))) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "counts must be a 1-d buffer of 64-bit integers");
        return NULL;
    }
    uint64_t *c = (uint64_t *)view.buf;
    Py_ssize_t len = view.shape ? view.shape[0] : view.len / 8;
    Py_ssize_t n = PyList_GET_SIZE(values);
    long long lo = 0, hi = 0;
    PyObject *sum = PyLong_FromLong(0);
    long long part = 0; /* partial sum, flushed into `sum` before it could overflow */
    if (!sum) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(values, i);
        if (!PyLong_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "latencies must be integer microseconds");
            goto fail;
        }
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
        if (v == -1 && PyErr_Occurred()) goto fail;
        if (overflow) v = overflow > 0 ? highest : 0;
        if (v < 0) v = 0;
        if (v > highest) v = highest;
        if (i == 0 || v < lo) lo = v;
        if (i == 0 || v > hi) hi = v;
        long long idx;
        if (v < exact) {
            idx = v;
        } else {
            int b = (64 - __builtin_clzll((unsigned long long)v | mask)) - shift;
            idx = (((long long)b + 1) << half_mag) + (v >> b) - half;
        }
        if (idx < 0 || idx >= len) {
            PyErr_Format(PyExc_IndexError, "value %lld is outside the histogram", v);
            goto fail;
        }
        c[idx] += 1;
        if (part > LLONG_MAX - v) {
            PyObject *p = PyLong_FromLongLong(part), *s2 = p ? PyNumber_Add(sum, p) : NULL;
            Py_XDECREF(p);
            if (!s2) goto fail;
            Py_SETREF(sum, s2);
            part = 0;
        }
        part += v;
    }
    PyBuffer_Release(&view);
    PyObject *p = PyLong_FromLongLong(part), *total = p ? PyNumber_Add(sum, p) : NULL;
    Py_XDECREF(p);
    Py_DECREF(sum);
    if (!total) return NULL;
    return Py_BuildValue("(nLLN)", n, lo, hi, total);
fail:
    Py_XDECREF(sum);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"compile_plan", compile_plan, METH_O, "Compile a record plan (schemas.fastcheck.native_plan)."},
    {"check_batch", check_batch, METH_VARARGS,
     "check_batch(plan, objs, tail) -> indices of the objects that are not valid."},
    {"group", group, METH_O, "group(events) -> the parts of an aggregate Batch."},
    {"hist_record", hist_record, METH_VARARGS,
     "hist_record(counts, values, mask, shift, half_mag, half, exact, highest) -> (n, lo, hi, sum)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_native", "The aggregation's per-event hot path in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
#define INTERN(var, text)                                                                      \
    if (!(var = PyUnicode_InternFromString(text))) return NULL;
    INTERN(s_tier_accessed, "tier_accessed");
    INTERN(s_tier_latencies, "tier_latencies");
    INTERN(s_operation, "operation");
    INTERN(s_cache_hit, "cache_hit");
    INTERN(s_hit, "hit");
    INTERN(s_put, "put");
    INTERN(s_error, "error");
    INTERN(s_agent_id, "agent_id");
    INTERN(s_latency_ms, "latency_ms");
    INTERN(s_total_latency_ms, "total_latency_ms");
    INTERN(s_query_fingerprint, "query_fingerprint");
    INTERN(s_query, "query");
#undef INTERN
    return PyModule_Create(&moduledef);
}
