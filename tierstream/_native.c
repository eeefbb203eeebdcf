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
 *   heavy_add(entries, queries) -> accesses added, heavy_texts(...), heavy_compact(...)
 *       twins of HeavyHitters' per-key loops (add_grouped, _merge_texts,
 *       _maybe_compact; processors/aggregate/heavy.py).
 *   scan(plan, value) -> None or a whole entry checked and grouped (see below).
 *   hist_record(counts, values, mask, shift, half_mag, half, exact, highest)
 *       -> (n, lo, hi, sum): twin of LatencyHistogram.record_us's Python loop
 *       (processors/aggregate/latency.py): clamps each value to 0..highest and
 *       adds one to its HdrHistogram counts-array bucket, in place.
 *   message_plan(template, (v, k, t)), messages(plan, flat, i, n, first_offset, out)
 *       -> the redis:// fetch's Faust messages for entries in the producer's
 *       layout; twin of processors/transport/fastpath.py, messages_py (see
 *       the section near the end).
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
    const char *utf8;       /* the name's UTF-8 (kept by `name`) */
    Py_ssize_t utf8_len;
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
    f->utf8 = PyUnicode_AsUTF8AndSize(f->name, &f->utf8_len);
    if (!f->utf8) return -1;
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
    if (!PyArg_ParseTuple(args, "OOKiiLLL", &counts, &values, &mask, &shift, &half_mag, &half,
                          &exact, &highest))
        return NULL;
    /* values: a list of ints, or a buffer of int64 (array('q'), from scan()) */
    Py_buffer vview;
    const long long *vbuf = NULL;
    int is_list = PyList_Check(values);
    if (!is_list) {
        if (PyObject_GetBuffer(values, &vview, PyBUF_FORMAT | PyBUF_ND) < 0) return NULL;
        const char *vf = vview.format ? vview.format : "B";
        if (*vf == '<' || *vf == '=' || *vf == '@') vf++;
        if (vview.itemsize != 8 || (strcmp(vf, "q") && strcmp(vf, "l"))) {
            PyBuffer_Release(&vview);
            PyErr_SetString(PyExc_TypeError, "values must be a list or an int64 buffer");
            return NULL;
        }
        vbuf = (const long long *)vview.buf;
    }
    if (mask == 0 || shift < 0 || shift > 63 || half_mag < 0 || half_mag > 62) {
        PyErr_SetString(PyExc_ValueError, "bad histogram parameters");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(counts, &view, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND) < 0) {
        if (!is_list) PyBuffer_Release(&vview);
        return NULL;
    }
    const char *fmt = view.format ? view.format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    if (view.ndim != 1 || view.itemsize != 8 || (strcmp(fmt, "Q") && strcmp(fmt, "q") &&
                                                 strcmp(fmt, "L") && strcmp(fmt, "l"))) {
        PyBuffer_Release(&view);
        if (!is_list) PyBuffer_Release(&vview);
        PyErr_SetString(PyExc_TypeError, "counts must be a 1-d buffer of 64-bit integers");
        return NULL;
    }
    uint64_t *c = (uint64_t *)view.buf;
    Py_ssize_t len = view.shape ? view.shape[0] : view.len / 8;
    Py_ssize_t n = is_list ? PyList_GET_SIZE(values) : vview.len / 8;
    long long lo = 0, hi = 0;
    PyObject *sum = PyLong_FromLong(0);
    long long part = 0; /* partial sum, flushed into `sum` before it could overflow */
    if (!sum) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        long long v;
        if (is_list) {
            PyObject *item = PyList_GET_ITEM(values, i);
            if (!PyLong_Check(item)) {
                PyErr_SetString(PyExc_TypeError, "latencies must be integer microseconds");
                goto fail;
            }
            int overflow = 0;
            v = PyLong_AsLongLongAndOverflow(item, &overflow);
            if (v == -1 && PyErr_Occurred()) goto fail;
            if (overflow) v = overflow > 0 ? highest : 0;
        } else {
            v = vbuf[i];
        }
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
    if (!is_list) PyBuffer_Release(&vview);
    PyObject *p = PyLong_FromLongLong(part), *total = p ? PyNumber_Add(sum, p) : NULL;
    Py_XDECREF(p);
    Py_DECREF(sum);
    if (!total) return NULL;
    return Py_BuildValue("(nLLN)", n, lo, hi, total);
fail:
    Py_XDECREF(sum);
    PyBuffer_Release(&view);
    if (!is_list) PyBuffer_Release(&vview);
    return NULL;
}


/* ---- scan: validate and group an access-topic value straight from its JSON ---- */
/*
 * scan(plan, value) -> None, or (n, ts_lo, ts_hi, event_keys, attempt_keys, tier_us,
 *                                total_us, queries, texts)
 *
 * The fast path for a whole entry: the JSON is parsed here, each event is
 * checked against the plan and the access rules as it is read, and grouped as
 * group() groups (latencies as array('q') instead of lists of ints). No
 * per-event dict is built. It answers None - "take the reference path"
 * (orjson.loads, check_batch, group) - for anything it does not vouch for: an
 * invalid event, a duplicate key, a \u escape of a lone surrogate, a number it does
 * not parse exactly as orjson would (over 18 digits, non-finite), a value that
 * is not an array of objects or one object, more than SCAN_MAX_TIERS distinct
 * tier names. So a value it accepts is one the reference path accepts whole,
 * with the same result (tests/schemas/test_native.py holds it to that).
 */

#define SCAN_MAX_TIERS 64
#define SCAN_MAX_CHAIN 32
#define SCAN_MAX_FIELDS 64

typedef struct { const char *p; Py_ssize_t n; } Span;

typedef struct {
    const char *p, *end;
    char *scratch; /* decoded escaped strings go here (never longer than the input) */
} Cur;

enum { T_NONE, T_NULL, T_STR, T_INT, T_FLOAT, T_BOOL, T_MAP };

typedef struct {
    int type;
    Span s;      /* T_STR: decoded UTF-8 */
    long long i; /* T_INT */
    double d;    /* T_FLOAT, and T_INT as a double */
    int b;       /* T_BOOL */
} Val;

typedef struct {
    Span name;
    double latency; /* ms */
    int hit, has_error;
} Attempt;

static void ws(Cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t'))
        c->p++;
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Length in code points of valid UTF-8, or -1 when it is not valid UTF-8. */
static Py_ssize_t utf8_len(const unsigned char *p, Py_ssize_t n) {
    Py_ssize_t cps = 0, i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
        } else if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (p[i + 1] & 0xC0) != 0x80) return -1;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (i + 2 >= n || (p[i + 1] & 0xC0) != 0x80 || (p[i + 2] & 0xC0) != 0x80) return -1;
            if (c == 0xE0 && p[i + 1] < 0xA0) return -1; /* overlong */
            if (c == 0xED && p[i + 1] >= 0xA0) return -1; /* surrogate */
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (i + 3 >= n || (p[i + 1] & 0xC0) != 0x80 || (p[i + 2] & 0xC0) != 0x80 ||
                (p[i + 3] & 0xC0) != 0x80)
                return -1;
            if (c == 0xF0 && p[i + 1] < 0x90) return -1;
            if (c == 0xF4 && p[i + 1] >= 0x90) return -1;
            i += 4;
        } else {
            return -1;
        }
        cps++;
    }
    return cps;
}

/* A JSON string at c->p (on the opening quote): its decoded UTF-8 in *out and its
   length in code points in *cps. 0 ok, 1 not vouched for. */
/* Nonzero unless all 8 bytes of x are plain ASCII: >= 0x20, < 0x80, not '"' or
   '\\' (bit tricks with no false negatives; a false positive only takes the
   byte-by-byte path). */
static inline uint64_t special8(uint64_t x) {
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
    return (((q - ones) & ~q) | ((b - ones) & ~b) | ((x - ones * 0x20) & ~x) | x) & high;
}

static int scan_string(Cur *c, Span *out, Py_ssize_t *cps) {
    const char *p = c->p + 1, *start = p;
    int escaped = 0, ascii = 1;
    for (;;) {
        while (c->end - p >= 8) {
            uint64_t x;
            memcpy(&x, p, 8);
            if (special8(x)) break;
            p += 8;
        }
        if (p >= c->end) return 1;
        unsigned char ch = (unsigned char)*p;
        if (ch == '"') break;
        if (ch < 0x20) return 1;
        if (ch == '\\') {
            escaped = 1;
            p += 2;
            continue;
        }
        if (ch >= 0x80) ascii = 0;
        p++;
    }
    if (p >= c->end) return 1;
    if (!escaped) {
        out->p = start;
        out->n = p - start;
        c->p = p + 1;
        if (ascii) {
            *cps = out->n;
            return 0;
        }
    } else {
        char *w = c->scratch, *wstart = w;
        const char *q = start;
        while (q < p) {
            if (*q != '\\') {
                *w++ = *q++;
                continue;
            }
            q++;
            switch (*q) {
            case '"': *w++ = '"'; break;
            case '\\': *w++ = '\\'; break;
            case '/': *w++ = '/'; break;
            case 'b': *w++ = '\b'; break;
            case 'f': *w++ = '\f'; break;
            case 'n': *w++ = '\n'; break;
            case 'r': *w++ = '\r'; break;
            case 't': *w++ = '\t'; break;
            case 'u': {
                if (q + 4 >= p + 1) return 1;
                int cp = 0;
                for (int k = 1; k <= 4; k++) {
                    int h = hexval(q[k]);
                    if (h < 0) return 1;
                    cp = cp * 16 + h;
                }
                if (cp >= 0xDC00 && cp <= 0xDFFF) return 1; /* a lone low surrogate */
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    /* a high surrogate: valid only with a low one as the next escape */
                    int lo = 0;
                    if (q + 10 >= p + 1 || q[5] != '\\' || q[6] != 'u') return 1;
                    for (int k = 7; k <= 10; k++) {
                        int h = hexval(q[k]);
                        if (h < 0) return 1;
                        lo = lo * 16 + h;
                    }
                    if (lo < 0xDC00 || lo > 0xDFFF) return 1;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    *w++ = (char)(0xF0 | (cp >> 18));
                    *w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
                    *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                    *w++ = (char)(0x80 | (cp & 0x3F));
                    q += 10;
                    break;
                }
                if (cp < 0x80) {
                    *w++ = (char)cp;
                } else if (cp < 0x800) {
                    *w++ = (char)(0xC0 | (cp >> 6));
                    *w++ = (char)(0x80 | (cp & 0x3F));
                } else {
                    *w++ = (char)(0xE0 | (cp >> 12));
                    *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                    *w++ = (char)(0x80 | (cp & 0x3F));
                }
                q += 4;
                break;
            }
            default:
                return 1;
            }
            q++;
        }
        out->p = wstart;
        out->n = w - wstart;
        c->scratch = w;
        c->p = p + 1;
    }
    *cps = utf8_len((const unsigned char *)out->p, out->n);
    return *cps < 0;
}

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Exact conversion of a decimal number (JSON grammar, already checked) when its
   digits form an integer below 2**53 and its power of ten is at most 22: then
   digits and 10**e are exact doubles and one multiplication or division rounds
   correctly, as strtod would (Clinger's fast path). 0: use the slow path. */
static int fast_float(const char *p, const char *end, double *out) {
    int neg = *p == '-';
    if (neg) p++;
    unsigned long long m = 0;
    int digits = 0, frac = 0, seen_dot = 0;
    for (; p < end && ((*p >= '0' && *p <= '9') || *p == '.'); p++) {
        if (*p == '.') {
            seen_dot = 1;
            continue;
        }
        if (m == 0 && *p == '0') {
            if (seen_dot) frac++;
            continue; /* leading zeros do not count */
        }
        if (++digits > 15) return 0;
        m = m * 10 + (unsigned long long)(*p - '0');
        if (seen_dot) frac++;
    }
    int e = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int eneg = 0;
        if (*p == '+' || *p == '-') eneg = *p++ == '-';
        for (; p < end; p++) {
            e = e * 10 + (*p - '0');
            if (e > 400) return 0;
        }
        if (eneg) e = -e;
    }
    e -= frac;
    double d = (double)m;
    if (m == 0) d = 0.0;
    else if (e >= 0 && e <= 22) d *= POW10[e];
    else if (e < 0 && e >= -22) d /= POW10[-e];
    else return 0;
    *out = neg ? -d : d;
    return 1;
}

/* A JSON number at c->p. 0 ok, 1 not vouched for. */
static int scan_number(Cur *c, Val *v) {
    const char *p = c->p, *start = p;
    if (p < c->end && *p == '-') p++;
    if (p >= c->end) return 1;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < c->end && *p >= '0' && *p <= '9') p++;
    } else {
        return 1;
    }
    int is_float = 0;
    if (p < c->end && *p == '.') {
        is_float = 1;
        p++;
        if (p >= c->end || *p < '0' || *p > '9') return 1;
        while (p < c->end && *p >= '0' && *p <= '9') p++;
    }
    if (p < c->end && (*p == 'e' || *p == 'E')) {
        is_float = 1;
        p++;
        if (p < c->end && (*p == '+' || *p == '-')) p++;
        if (p >= c->end || *p < '0' || *p > '9') return 1;
        while (p < c->end && *p >= '0' && *p <= '9') p++;
    }
    if (p - start > 40) return 1;
    if (!is_float) {
        Py_ssize_t digits = (p - start) - (*start == '-');
        if (digits > 15) return 1; /* keep ints exact as doubles too */
        long long x = 0;
        for (const char *q = start + (*start == '-'); q < p; q++) x = x * 10 + (*q - '0');
        v->type = T_INT;
        v->i = *start == '-' ? -x : x;
        v->d = (double)v->i;
    } else if (fast_float(start, p, &v->d)) {
        v->type = T_FLOAT;
    } else {
        char buf[48];
        memcpy(buf, start, p - start);
        buf[p - start] = 0;
        char *endp;
        double d = PyOS_string_to_double(buf, &endp, NULL);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 1;
        }
        if (*endp || !isfinite(d)) return 1;
        v->type = T_FLOAT;
        v->d = d;
    }
    c->p = p;
    return 0;
}

static int lit(Cur *c, const char *word, Py_ssize_t n) {
    if (c->end - c->p < n || memcmp(c->p, word, n)) return 1;
    c->p += n;
    return 0;
}

static int span_eq_str(Span s, PyObject *str) {
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(str, &n);
    if (!u) {
        PyErr_Clear();
        return 0;
    }
    return n == s.n && memcmp(u, s.p, n) == 0;
}

static int span_in_set(Span s, PyObject *set) {
    Py_ssize_t pos = 0;
    PyObject *k;
    Py_hash_t h;
    while (_PySet_NextEntry(set, &pos, &k, &h))
        if (PyUnicode_Check(k) && span_eq_str(s, k)) return 1;
    return 0;
}

/* The field named `key`; `hint` (the field after the previous one) is tried
   first, since producers write fields in the same order every time. */
static int field_index(const RecordPlan *r, Span key, int hint) {
    if (hint >= 0 && hint < r->n) {
        const FieldPlan *f = &r->fields[hint];
        if (f->utf8_len == key.n && memcmp(f->utf8, key.p, key.n) == 0) return hint;
    }
    for (Py_ssize_t i = 0; i < r->n; i++) {
        const FieldPlan *f = &r->fields[i];
        if (f->utf8_len == key.n && memcmp(f->utf8, key.p, key.n) == 0) return (int)i;
    }
    return -1;
}

/* The bounds of a number field, on a number already parsed. 1 when outside. */
static int num_out(const FieldPlan *f, const Val *v) {
    if (f->minimum) {
        if (!f->min_d_ok) return 1;
        if (v->d < f->min_d) return 1;
    }
    if (f->maximum) {
        if (!f->max_d_ok) return 1;
        if (v->d > f->max_d) return 1;
    }
    return 0;
}

/* Check a scalar value against a (non-map) field. 0 valid, 1 not vouched for. */
static int scalar_ok(const FieldPlan *f, const Val *v, Py_ssize_t cps) {
    if (v->type == T_NULL) return !f->nullable;
    switch (f->kind) {
    case K_STRING:
        if (v->type != T_STR) return 1;
        if (f->max_length >= 0 && cps > f->max_length) return 1;
        if (f->enum_set && !span_in_set(v->s, f->enum_set)) return 1;
        if (f->cnst) return !(PyUnicode_CheckExact(f->cnst) && span_eq_str(v->s, f->cnst));
        return 0;
    case K_NUMBER:
    case K_INTEGER:
        if (v->type != T_INT && !(v->type == T_FLOAT && f->kind == K_NUMBER)) return 1;
        if (num_out(f, v)) return 1;
        if (f->cnst) {
            if (v->type != T_INT || !PyLong_CheckExact(f->cnst)) return 1;
            int overflow = 0;
            long long cv = PyLong_AsLongLongAndOverflow(f->cnst, &overflow);
            if (overflow || (cv == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                return 1;
            }
            return cv != v->i;
        }
        return 0;
    case K_BOOLEAN:
        if (v->type != T_BOOL) return 1;
        return f->cnst != NULL; /* a boolean const: not vouched for */
    default:
        return 1; /* object, list, record: not scanned */
    }
}

/* A scalar JSON value at c->p. 0 ok, 1 not vouched for. */
static int scan_scalar(Cur *c, Val *v, Py_ssize_t *cps) {
    *cps = 0;
    switch (*c->p) {
    case '"':
        v->type = T_STR;
        return scan_string(c, &v->s, cps);
    case 't':
        v->type = T_BOOL;
        v->b = 1;
        return lit(c, "true", 4);
    case 'f':
        v->type = T_BOOL;
        v->b = 0;
        return lit(c, "false", 5);
    case 'n':
        v->type = T_NULL;
        return lit(c, "null", 4);
    default:
        return scan_number(c, v);
    }
}

/* An object of scalar fields (rec) at c->p, its values in vals (indexed like
   rec->fields). 0 ok, 1 not vouched for. */
static int scan_flat_record(Cur *c, const RecordPlan *rec, Val *vals) {
    if (rec->n > SCAN_MAX_FIELDS || *c->p != '{') return 1;
    for (Py_ssize_t i = 0; i < rec->n; i++) vals[i].type = T_NONE;
    int hint = 0;
    c->p++;
    ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
    } else {
        for (;;) {
            Span key;
            Py_ssize_t cps;
            if (c->p >= c->end || *c->p != '"' || scan_string(c, &key, &cps)) return 1;
            ws(c);
            if (c->p >= c->end || *c->p != ':') return 1;
            c->p++;
            ws(c);
            if (c->p >= c->end) return 1;
            int fi = field_index(rec, key, hint);
            if (fi < 0 || vals[fi].type != T_NONE) return 1; /* unknown or duplicate */
            hint = fi + 1;
            const FieldPlan *f = &rec->fields[fi];
            if (scan_scalar(c, &vals[fi], &cps) || scalar_ok(f, &vals[fi], cps)) return 1;
            ws(c);
            if (c->p >= c->end) return 1;
            if (*c->p == ',') {
                c->p++;
                ws(c);
                continue;
            }
            if (*c->p != '}') return 1;
            c->p++;
            break;
        }
    }
    for (Py_ssize_t i = 0; i < rec->n; i++)
        if (vals[i].type == T_NONE && rec->fields[i].required) return 1;
    return 0;
}

typedef struct {
    /* positions in the access record's fields (-1: not in the plan) */
    int ts, agent, op, fp, query, served, chain, total, cache_hit;
    /* in the tier attempt record */
    int latency, hit, error;
} AccessIdx;

typedef struct {
    Span agents_span[SCAN_MAX_TIERS];
    PyObject *agents[SCAN_MAX_TIERS];
    int n_agents;
} Names;

/* The str of a tier (or agent) name, cached per scan call. NULL + no error: table full. */
static PyObject *name_obj(Span s, Span *spans, PyObject **objs, int *n) {
    for (int i = 0; i < *n; i++)
        if (spans[i].n == s.n && memcmp(spans[i].p, s.p, s.n) == 0) return objs[i];
    if (*n >= SCAN_MAX_TIERS) return NULL;
    PyObject *o = PyUnicode_DecodeUTF8(s.p, s.n, NULL);
    if (!o) return NULL;
    spans[*n] = s;
    objs[*n] = o;
    (*n)++;
    return o;
}

static PyObject *array_q; /* array.array */

/* Counts of grouping keys whose parts are objects scan() holds for the whole call
   (cached names, None, True, False): counted by identity here, turned into the
   tuple-keyed dict once at the end instead of a tuple and two dict lookups per
   event. */
#define KT_SLOTS 1024
typedef struct {
    PyObject *a, *b; /* b NULL: an attempt key (tier, put, hit, err) */
    int flags;       /* put | hit-or-cache_hit << 1 | err << 2 */
    long long count;
} KSlot;
typedef struct { KSlot s[KT_SLOTS]; int used; } KTable;

static int kt_flush(KTable *t, PyObject *ev_keys, PyObject *att_keys) {
    for (int i = 0; i < KT_SLOTS; i++) {
        KSlot *k = &t->s[i];
        if (!k->count) continue;
        PyObject *put = (k->flags & 1) ? Py_True : Py_False;
        PyObject *flag1 = (k->flags & 2) ? Py_True : Py_False;
        PyObject *err = (k->flags & 4) ? Py_True : Py_False;
        PyObject *key = k->b ? PyTuple_Pack(5, k->a, put, k->b, flag1, err)
                             : PyTuple_Pack(4, k->a, put, flag1, err);
        if (!key) return -1;
        PyObject *d = k->b ? ev_keys : att_keys;
        PyObject *cur = PyDict_GetItemWithError(d, key);
        long long c = k->count;
        if (cur) {
            long long old = PyLong_AsLongLong(cur);
            if (old == -1 && PyErr_Occurred()) {
                Py_DECREF(key);
                return -1;
            }
            c += old;
        } else if (PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        PyObject *v = PyLong_FromLongLong(c);
        int rc = v ? PyDict_SetItem(d, key, v) : -1;
        Py_XDECREF(v);
        Py_DECREF(key);
        if (rc < 0) return -1;
        k->count = 0;
    }
    t->used = 0;
    return 0;
}

static int kt_add(KTable *t, PyObject *a, PyObject *b, int flags, PyObject *ev_keys,
                  PyObject *att_keys) {
    uintptr_t h = ((uintptr_t)a >> 4) * 0x9E3779B97F4A7C15ULL ^ ((uintptr_t)b >> 4) * 0xC2B2AE3D27D4EB4FULL;
    h ^= (uintptr_t)flags * 0x165667B19E3779F9ULL;
    for (unsigned i = (unsigned)(h >> 20) % KT_SLOTS;; i = (i + 1) % KT_SLOTS) {
        KSlot *k = &t->s[i];
        if (!k->count) {
            if (t->used >= KT_SLOTS * 3 / 4) {
                if (kt_flush(t, ev_keys, att_keys) < 0) return -1;
                return kt_add(t, a, b, flags, ev_keys, att_keys);
            }
            k->a = a;
            k->b = b;
            k->flags = flags;
            k->count = 1;
            t->used++;
            return 0;
        }
        if (k->a == a && k->b == b && k->flags == flags) {
            k->count++;
            return 0;
        }
    }
}

/* Growable int64 vector turned into array('q') at the end. */
typedef struct { long long *v; Py_ssize_t n, cap; } Vec;

static int vec_push(Vec *a, long long x) {
    if (a->n == a->cap) {
        Py_ssize_t cap = a->cap ? a->cap * 2 : 256;
        long long *v = PyMem_Realloc(a->v, cap * sizeof(long long));
        if (!v) {
            PyErr_NoMemory();
            return -1;
        }
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

static PyObject *vec_array(Vec *a) {
    PyObject *b = PyBytes_FromStringAndSize((const char *)a->v, a->n * (Py_ssize_t)sizeof(long long));
    if (!b) return NULL;
    PyObject *arr = PyObject_CallFunction(array_q, "sO", "q", b);
    Py_DECREF(b);
    return arr;
}

/* [1, us]: a new query accumulator */
static PyObject *new_acc(long long us) {
    PyObject *l = PyList_New(2);
    if (!l) return NULL;
    PyObject *one = PyLong_FromLong(1), *u = PyLong_FromLongLong(us);
    if (!one || !u) {
        Py_XDECREF(one);
        Py_XDECREF(u);
        Py_DECREF(l);
        return NULL;
    }
    PyList_SET_ITEM(l, 0, one);
    PyList_SET_ITEM(l, 1, u);
    return l;
}

static long long ms_to_us(double ms) { return (long long)(ms * 1000.0 + 0.5); }

static int span_lt_str(Span s, PyObject *str, int *lt) {
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(str, &n);
    if (!u) return -1;
    Py_ssize_t m = s.n < n ? s.n : n;
    int c = memcmp(s.p, u, m);
    *lt = c < 0 || (c == 0 && s.n < n);
    return 0;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *cap, *value;
    if (!PyArg_ParseTuple(args, "OO!", &cap, &PyBytes_Type, &value)) return NULL;
    RecordPlan *rec = PyCapsule_GetPointer(cap, PLAN_CAPSULE);
    if (!rec) return NULL;
    if (rec->n > SCAN_MAX_FIELDS) Py_RETURN_NONE;

    AccessIdx ix;
    ix.ts = ix.agent = ix.op = ix.fp = ix.query = ix.served = ix.chain = ix.total = -1;
    ix.cache_hit = ix.latency = ix.hit = ix.error = -1;
    const RecordPlan *att = NULL;
    for (Py_ssize_t i = 0; i < rec->n; i++) {
        PyObject *nm = rec->fields[i].name;
        int k = rec->fields[i].kind;
        if (!PyUnicode_CompareWithASCIIString(nm, "ts") && k == K_NUMBER) ix.ts = (int)i;
        else if (!PyUnicode_CompareWithASCIIString(nm, "agent_id") && k == K_STRING) ix.agent = (int)i;
        else if (!PyUnicode_CompareWithASCIIString(nm, "operation") && k == K_STRING) ix.op = (int)i;
        else if (!PyUnicode_CompareWithASCIIString(nm, "query_fingerprint") && k == K_STRING) ix.fp = (int)i;
        else if (!PyUnicode_CompareWithASCIIString(nm, "query") && k == K_STRING) ix.query = (int)i;
        else if (!PyUnicode_CompareWithASCIIString(nm, "tier_accessed") && k == K_STRING) ix.served = (int)i;
        else if (!PyUnicode_CompareWithASCIIString(nm, "total_latency_ms") && k == K_NUMBER) ix.total = (int)i;
        else if (!PyUnicode_CompareWithASCIIString(nm, "cache_hit") && k == K_BOOLEAN) ix.cache_hit = (int)i;
        else if (!PyUnicode_CompareWithASCIIString(nm, "tier_latencies") && k == K_MAP) {
            ix.chain = (int)i;
            att = rec->fields[i].values;
        }
    }
    if (!att || att->n > SCAN_MAX_FIELDS) Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < att->n; i++) {
        PyObject *nm = att->fields[i].name;
        int k = att->fields[i].kind;
        if (!PyUnicode_CompareWithASCIIString(nm, "latency_ms") && k == K_NUMBER) ix.latency = (int)i;
        else if (!PyUnicode_CompareWithASCIIString(nm, "hit") && k == K_BOOLEAN) ix.hit = (int)i;
        else if (!PyUnicode_CompareWithASCIIString(nm, "error") && k == K_STRING) ix.error = (int)i;
    }
    /* every field the grouping reads must be required, except query and error */
    if (ix.ts < 0 || ix.agent < 0 || ix.op < 0 || ix.fp < 0 || ix.query < 0 || ix.served < 0 ||
        ix.total < 0 || ix.cache_hit < 0 || ix.latency < 0 || ix.hit < 0 || ix.error < 0)
        Py_RETURN_NONE;
    const FieldPlan *chain_f = &rec->fields[ix.chain];
    const int need_req[] = {ix.ts, ix.agent, ix.op, ix.fp, ix.served, ix.chain, ix.total, ix.cache_hit};
    for (size_t i = 0; i < sizeof(need_req) / sizeof(int); i++)
        if (!rec->fields[need_req[i]].required) Py_RETURN_NONE;
    if (!att->fields[ix.latency].required || !att->fields[ix.hit].required ||
        att->fields[ix.latency].nullable || att->fields[ix.hit].nullable)
        Py_RETURN_NONE;
    if (rec->fields[ix.ts].nullable || rec->fields[ix.total].nullable ||
        rec->fields[ix.agent].nullable || rec->fields[ix.fp].nullable ||
        rec->fields[ix.op].nullable || rec->fields[ix.cache_hit].nullable)
        Py_RETURN_NONE;

    Py_ssize_t len = PyBytes_GET_SIZE(value);
    KTable *kt = PyMem_Calloc(1, sizeof(KTable));
    if (!kt) return PyErr_NoMemory();
    char *scratch = PyMem_Malloc(len + 1);
    if (!scratch) {
        PyMem_Free(kt);
        return PyErr_NoMemory();
    }
    Cur c = {PyBytes_AS_STRING(value), PyBytes_AS_STRING(value) + len, scratch};

    PyObject *ev_keys = PyDict_New(), *att_keys = PyDict_New(), *queries = PyDict_New(),
             *texts = PyDict_New(), *tier_us = PyDict_New();
    PyObject *out = NULL;
    Names names;
    names.n_agents = 0;
    Vec total_us = {NULL, 0, 0};
    Span tier_spans[SCAN_MAX_TIERS];
    PyObject *tier_objs[SCAN_MAX_TIERS];
    Vec tier_vecs[SCAN_MAX_TIERS];
    int n_tier = 0;
    memset(tier_vecs, 0, sizeof(tier_vecs));
    int fallback = 0;
    Py_ssize_t n = 0;
    double lo = 0, hi = 0;
    Val vals[SCAN_MAX_FIELDS];
    Val avals[SCAN_MAX_FIELDS];
    Attempt chain[SCAN_MAX_CHAIN];
    if (!ev_keys || !att_keys || !queries || !texts || !tier_us) goto done;

    ws(&c);
    int array = 0;
    if (c.p < c.end && *c.p == '[') {
        array = 1;
        c.p++;
        ws(&c);
        if (c.p < c.end && *c.p == ']') {
            c.p++;
            goto finished;
        }
    }
    for (;;) {
        /* ---- one event ---- */
        if (c.p >= c.end || *c.p != '{') { fallback = 1; goto done; }
        for (Py_ssize_t i = 0; i < rec->n; i++) vals[i].type = T_NONE;
        int n_chain = 0, hint = 0;
        c.p++;
        ws(&c);
        if (c.p < c.end && *c.p == '}') { fallback = 1; goto done; } /* {} misses required fields */
        for (;;) {
            Span key;
            Py_ssize_t cps;
            if (c.p >= c.end || *c.p != '"' || scan_string(&c, &key, &cps)) { fallback = 1; goto done; }
            ws(&c);
            if (c.p >= c.end || *c.p != ':') { fallback = 1; goto done; }
            c.p++;
            ws(&c);
            if (c.p >= c.end) { fallback = 1; goto done; }
            int fi = field_index(rec, key, hint);
            if (fi < 0 || vals[fi].type != T_NONE) { fallback = 1; goto done; }
            hint = fi + 1;
            const FieldPlan *f = &rec->fields[fi];
            if (fi == ix.chain && *c.p == '{') {
                vals[fi].type = T_MAP;
                c.p++;
                ws(&c);
                if (c.p < c.end && *c.p == '}') {
                    c.p++;
                } else {
                    for (;;) {
                        Span tname;
                        if (c.p >= c.end || *c.p != '"' || scan_string(&c, &tname, &cps) ||
                            tname.n == 0 || n_chain >= SCAN_MAX_CHAIN) { fallback = 1; goto done; }
                        for (int k = 0; k < n_chain; k++)
                            if (chain[k].name.n == tname.n && !memcmp(chain[k].name.p, tname.p, tname.n)) {
                                fallback = 1; /* duplicate tier */
                                goto done;
                            }
                        ws(&c);
                        if (c.p >= c.end || *c.p != ':') { fallback = 1; goto done; }
                        c.p++;
                        ws(&c);
                        if (c.p >= c.end || scan_flat_record(&c, att, avals)) { fallback = 1; goto done; }
                        Attempt *a = &chain[n_chain++];
                        a->name = tname;
                        a->latency = avals[ix.latency].d;
                        a->hit = avals[ix.hit].b;
                        a->has_error = avals[ix.error].type == T_STR;
                        ws(&c);
                        if (c.p >= c.end) { fallback = 1; goto done; }
                        if (*c.p == ',') { c.p++; ws(&c); continue; }
                        if (*c.p != '}') { fallback = 1; goto done; }
                        c.p++;
                        break;
                    }
                }
                if (chain_f->max_entries >= 0 && n_chain > chain_f->max_entries) { fallback = 1; goto done; }
            } else if (fi == ix.chain) {
                if (scan_scalar(&c, &vals[fi], &cps) || vals[fi].type != T_NULL || !f->nullable) {
                    fallback = 1; /* a null chain is not scanned either */
                    goto done;
                }
                fallback = 1;
                goto done;
            } else {
                if (scan_scalar(&c, &vals[fi], &cps) || scalar_ok(f, &vals[fi], cps)) { fallback = 1; goto done; }
            }
            ws(&c);
            if (c.p >= c.end) { fallback = 1; goto done; }
            if (*c.p == ',') { c.p++; ws(&c); continue; }
            if (*c.p != '}') { fallback = 1; goto done; }
            c.p++;
            break;
        }
        for (Py_ssize_t i = 0; i < rec->n; i++)
            if (vals[i].type == T_NONE && rec->fields[i].required) { fallback = 1; goto done; }

        /* ---- the access rules ---- */
        const Val *served = &vals[ix.served];
        int served_i = -1;
        if (served->type == T_STR) {
            for (int k = 0; k < n_chain; k++)
                if (chain[k].name.n == served->s.n && !memcmp(chain[k].name.p, served->s.p, served->s.n)) {
                    served_i = k;
                    break;
                }
            if (served_i < 0 || !chain[served_i].hit) { fallback = 1; goto done; }
        }
        const Val *op = &vals[ix.op];
        int is_put = op->s.n == 3 && !memcmp(op->s.p, "put", 3);
        int cache_hit = vals[ix.cache_hit].b;
        if (is_put ? cache_hit : (cache_hit != (served_i == 0))) { fallback = 1; goto done; }

        /* ---- grouping (as group_one) ---- */
        double ts = vals[ix.ts].d;
        if (n == 0 || ts < lo) lo = ts;
        if (n == 0 || ts > hi) hi = ts;
        n++;
        PyObject *put_flag = is_put ? Py_True : Py_False;
        PyObject *served_obj = Py_None;
        int err = 0;
        for (int k = 0; k < n_chain; k++) {
            Attempt *a = &chain[k];
            int ti = -1;
            for (int j = 0; j < n_tier; j++)
                if (tier_spans[j].n == a->name.n && !memcmp(tier_spans[j].p, a->name.p, a->name.n)) {
                    ti = j;
                    break;
                }
            if (ti < 0) {
                if (n_tier >= SCAN_MAX_TIERS) { fallback = 1; goto done; }
                PyObject *o = PyUnicode_DecodeUTF8(a->name.p, a->name.n, NULL);
                if (!o) goto done;
                ti = n_tier++;
                tier_spans[ti] = a->name;
                tier_objs[ti] = o;
            }
            if (k == served_i) served_obj = tier_objs[ti];
            err |= a->has_error;
            if (kt_add(kt, tier_objs[ti], NULL, is_put | (a->hit << 1) | (a->has_error << 2),
                       ev_keys, att_keys) < 0)
                goto done;
            if (!is_put && vec_push(&tier_vecs[ti], ms_to_us(a->latency)) < 0) goto done;
        }
        PyObject *agent = name_obj(vals[ix.agent].s, names.agents_span, names.agents, &names.n_agents);
        PyObject *agent_tmp = NULL;
        if (!agent) {
            if (PyErr_Occurred()) goto done;
            agent = agent_tmp = PyUnicode_DecodeUTF8(vals[ix.agent].s.p, vals[ix.agent].s.n, NULL);
            if (!agent) goto done;
        }
        int rc;
        if (agent_tmp) { /* not cached: counted at once, by value */
            PyObject *key = PyTuple_Pack(5, agent, put_flag, served_obj,
                                         (!is_put && cache_hit) ? Py_True : Py_False,
                                         err ? Py_True : Py_False);
            Py_DECREF(agent_tmp);
            if (!key) goto done;
            rc = count_key(ev_keys, key);
            Py_DECREF(key);
        } else {
            rc = kt_add(kt, agent, served_obj, is_put | ((!is_put && cache_hit) << 1) | (err << 2),
                        ev_keys, att_keys);
        }
        if (rc < 0) goto done;
        if (!is_put) {
            long long us = ms_to_us(vals[ix.total].d);
            if (vec_push(&total_us, us) < 0) goto done;
            PyObject *fp = PyUnicode_DecodeUTF8(vals[ix.fp].s.p, vals[ix.fp].s.n, NULL);
            if (!fp) goto done;
            PyObject *key = PyTuple_Pack(2, fp, served_obj);
            if (!key) { Py_DECREF(fp); goto done; }
            PyObject *acc = PyDict_GetItemWithError(queries, key);
            if (acc) {
                rc = (list_add(acc, 0, 1) < 0 || list_add(acc, 1, us) < 0) ? -1 : 0;
            } else if (PyErr_Occurred()) {
                rc = -1;
            } else {
                acc = new_acc(us);
                rc = acc ? PyDict_SetItem(queries, key, acc) : -1;
                Py_XDECREF(acc);
            }
            Py_DECREF(key);
            const Val *q = &vals[ix.query];
            if (rc == 0 && q->type == T_STR) {
                PyObject *cur = PyDict_GetItemWithError(texts, fp);
                int lt = 1;
                if (!cur && PyErr_Occurred()) rc = -1;
                else if (cur && span_lt_str(q->s, cur, &lt) < 0) rc = -1;
                if (rc == 0 && lt) {
                    PyObject *t = PyUnicode_DecodeUTF8(q->s.p, q->s.n, NULL);
                    rc = t ? PyDict_SetItem(texts, fp, t) : -1;
                    Py_XDECREF(t);
                }
            }
            Py_DECREF(fp);
            if (rc < 0) goto done;
        }
        /* ---- next event ---- */
        ws(&c);
        if (!array) break;
        if (c.p >= c.end) { fallback = 1; goto done; }
        if (*c.p == ',') { c.p++; ws(&c); continue; }
        if (*c.p != ']') { fallback = 1; goto done; }
        c.p++;
        break;
    }
finished:
    ws(&c);
    if (c.p != c.end) { fallback = 1; goto done; }
    if (kt_flush(kt, ev_keys, att_keys) < 0) goto done;
    for (int j = 0; j < n_tier; j++) {
        if (!tier_vecs[j].n) continue;
        PyObject *arr = vec_array(&tier_vecs[j]);
        if (!arr) goto done;
        int rc = PyDict_SetItem(tier_us, tier_objs[j], arr);
        Py_DECREF(arr);
        if (rc < 0) goto done;
    }
    {
        PyObject *tot = vec_array(&total_us);
        if (!tot) goto done;
        out = Py_BuildValue("(nddOOOOOO)", n, lo, hi, ev_keys, att_keys, tier_us, tot, queries, texts);
        Py_DECREF(tot);
    }
done:
    PyMem_Free(scratch);
    PyMem_Free(kt);
    PyMem_Free(total_us.v);
    for (int j = 0; j < n_tier; j++) {
        Py_DECREF(tier_objs[j]);
        PyMem_Free(tier_vecs[j].v);
    }
    for (int j = 0; j < names.n_agents; j++) Py_DECREF(names.agents[j]);
    Py_XDECREF(ev_keys);
    Py_XDECREF(att_keys);
    Py_XDECREF(queries);
    Py_XDECREF(texts);
    Py_XDECREF(tier_us);
    if (fallback && !PyErr_Occurred()) Py_RETURN_NONE;
    return out;
}

/* ---- heavy_add: the per-key loop of HeavyHitters.add_grouped ------------------ */

/* A new list [a, b]. */
static PyObject *pair(PyObject *a, PyObject *b) {
    PyObject *l = PyList_New(2);
    if (!l) return NULL;
    Py_INCREF(a);
    PyList_SET_ITEM(l, 0, a);
    Py_INCREF(b);
    PyList_SET_ITEM(l, 1, b);
    return l;
}

/* heavy_add(entries, queries) -> accesses added. entries: fingerprint ->
   [g, {served: [count, us]}] (updated in place); queries: (fingerprint, served)
   -> [count, us], as a Batch holds them. Twin of the loop in
   processors/aggregate/heavy.py, HeavyHitters._add_queries_py. */
static PyObject *heavy_add(PyObject *self, PyObject *args) {
    PyObject *entries, *queries;
    if (!PyArg_ParseTuple(args, "O!O!", &PyDict_Type, &entries, &PyDict_Type, &queries))
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *val;
    long long added = 0;
    while (PyDict_Next(queries, &pos, &key, &val)) {
        if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != 2 || !PyList_CheckExact(val) ||
            PyList_GET_SIZE(val) != 2) {
            PyErr_SetString(PyExc_TypeError, "queries must map (fingerprint, served) to [count, us]");
            return NULL;
        }
        PyObject *fp = PyTuple_GET_ITEM(key, 0), *served = PyTuple_GET_ITEM(key, 1);
        long long c = PyLong_AsLongLong(PyList_GET_ITEM(val, 0));
        if (c == -1 && PyErr_Occurred()) return NULL;
        PyObject *cnt = PyList_GET_ITEM(val, 0), *us = PyList_GET_ITEM(val, 1);
        added += c;
        PyObject *e = PyDict_GetItemWithError(entries, fp);
        if (!e) {
            if (PyErr_Occurred()) return NULL;
            PyObject *tiers = PyDict_New();
            if (!tiers) return NULL;
            PyObject *tv = pair(cnt, us);
            int rc = tv ? PyDict_SetItem(tiers, served, tv) : -1;
            Py_XDECREF(tv);
            PyObject *entry = rc == 0 ? pair(cnt, tiers) : NULL;
            Py_DECREF(tiers);
            rc = entry ? PyDict_SetItem(entries, fp, entry) : -1;
            Py_XDECREF(entry);
            if (rc < 0) return NULL;
            continue;
        }
        if (!PyList_CheckExact(e) || PyList_GET_SIZE(e) != 2 || !PyDict_CheckExact(PyList_GET_ITEM(e, 1))) {
            PyErr_SetString(PyExc_TypeError, "corrupt heavy-hitter entry");
            return NULL;
        }
        if (list_add(e, 0, c) < 0) return NULL;
        PyObject *tiers = PyList_GET_ITEM(e, 1);
        PyObject *t = PyDict_GetItemWithError(tiers, served);
        if (!t) {
            if (PyErr_Occurred()) return NULL;
            PyObject *tv = pair(cnt, us);
            int rc = tv ? PyDict_SetItem(tiers, served, tv) : -1;
            Py_XDECREF(tv);
            if (rc < 0) return NULL;
            continue;
        }
        if (!PyList_CheckExact(t) || PyList_GET_SIZE(t) != 2) {
            PyErr_SetString(PyExc_TypeError, "corrupt heavy-hitter tier totals");
            return NULL;
        }
        long long u = PyLong_AsLongLong(us);
        if (u == -1 && PyErr_Occurred()) return NULL;
        if (list_add(t, 0, c) < 0 || list_add(t, 1, u) < 0) return NULL;
    }
    return PyLong_FromLongLong(added);
}

/* heavy_texts(entries, mine, texts): for each fingerprint of `texts` that is
   tracked in `entries`, keep the smaller text in `mine`. Twin of
   HeavyHitters._merge_texts. */
static PyObject *heavy_texts(PyObject *self, PyObject *args) {
    PyObject *entries, *mine, *texts;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyDict_Type, &entries, &PyDict_Type, &mine, &PyDict_Type,
                          &texts))
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *fp, *text;
    while (PyDict_Next(texts, &pos, &fp, &text)) {
        int in = PyDict_Contains(entries, fp);
        if (in < 0) return NULL;
        if (!in) continue;
        PyObject *cur = PyDict_GetItemWithError(mine, fp);
        int lt = 1;
        if (cur) {
            lt = PyObject_RichCompareBool(text, cur, Py_LT);
            if (lt < 0) return NULL;
        } else if (PyErr_Occurred()) {
            return NULL;
        }
        if (lt && PyDict_SetItem(mine, fp, text) < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static int cmp_desc(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* heavy_compact(entries, texts, capacity) -> (entries, texts, cut): the
   Misra-Gries step of HeavyHitters._maybe_compact (its twin), run when more
   than 2 x capacity keys are tracked: cut = the (capacity+1)-th largest
   counter; keys above it keep counter - cut (their lists changed in place),
   the others are dropped (from texts too). */
static PyObject *heavy_compact(PyObject *self, PyObject *args) {
    PyObject *entries, *texts;
    Py_ssize_t capacity;
    if (!PyArg_ParseTuple(args, "O!O!n", &PyDict_Type, &entries, &PyDict_Type, &texts, &capacity))
        return NULL;
    Py_ssize_t m = PyDict_GET_SIZE(entries);
    if (capacity < 1 || m <= capacity) {
        PyErr_SetString(PyExc_ValueError, "heavy_compact needs more than capacity entries");
        return NULL;
    }
    long long *g = PyMem_Malloc(m * sizeof(long long));
    if (!g) return PyErr_NoMemory();
    Py_ssize_t pos = 0, i = 0;
    PyObject *fp, *e;
    while (PyDict_Next(entries, &pos, &fp, &e)) {
        if (!PyList_CheckExact(e) || PyList_GET_SIZE(e) != 2) {
            PyMem_Free(g);
            PyErr_SetString(PyExc_TypeError, "corrupt heavy-hitter entry");
            return NULL;
        }
        g[i] = PyLong_AsLongLong(PyList_GET_ITEM(e, 0));
        if (g[i] == -1 && PyErr_Occurred()) {
            PyMem_Free(g);
            return NULL;
        }
        i++;
    }
    qsort(g, m, sizeof(long long), cmp_desc);
    long long cut = g[capacity];
    PyMem_Free(g);
    PyObject *kept = PyDict_New(), *kept_texts = PyDict_New();
    if (!kept || !kept_texts) goto fail;
    pos = 0;
    while (PyDict_Next(entries, &pos, &fp, &e)) {
        long long c = PyLong_AsLongLong(PyList_GET_ITEM(e, 0));
        if (c <= cut) continue;
        if (list_add(e, 0, -cut) < 0 || PyDict_SetItem(kept, fp, e) < 0) goto fail;
    }
    pos = 0;
    PyObject *text;
    while (PyDict_Next(texts, &pos, &fp, &text)) {
        int in = PyDict_Contains(kept, fp);
        if (in < 0 || (in && PyDict_SetItem(kept_texts, fp, text) < 0)) goto fail;
    }
    return Py_BuildValue("(NNL)", kept, kept_texts, cut);
fail:
    Py_XDECREF(kept);
    Py_XDECREF(kept_texts);
    return NULL;
}

/* ---- Faust messages for the redis:// consumer (processors/transport) ---------
 *
 * message_plan(template, (v, k, t)) -> plan
 *     `template` is a ConsumerMessage made by its own __init__ for one
 *     partition. The plan holds its type and the value of every object slot
 *     along the MRO (unset slots stay unset), except the six that vary per
 *     entry (offset, timestamp, key, value, serialized_key_size,
 *     serialized_value_size), whose offsets it records. (v, k, t) are the wire
 *     field names (schemas.wire VALUE, KEY, TIMESTAMP).
 * messages(plan, flat, i, n, first_offset, out) -> next i
 *     twin of processors/transport/fastpath.py, messages_py: up to n entries
 *     of READ_SCRIPT's flat reply from flat[i] (an id), with the dense offsets
 *     first_offset, first_offset + 1, ...: each entry in the producer's own
 *     layout (`v <value> k <key> t <ms>` or `v <value> t <ms>`, the ms 1..15
 *     ASCII digits, every item an exact bytes and the field count an exact
 *     int) becomes a message appended to `out`; the first entry that is not
 *     stops the run and its index is returned (Python takes it). Offsets
 *     that would not fit in an int64 make nothing (the index is i).
 *
 * A message is made as Python makes one: tp_new(type, (), NULL) (object_new,
 * which also sets up the managed __dict__), then its slots are stored; what
 * __init__ would compute is in the template. The plan refuses types for
 * which that would differ (their own __new__ or __setattr__, slots that are
 * not plain object slots or are shadowed, C-level fields, a non-empty
 * instance __dict__, template values that are not immutable). */

/* Here, not at the top: its T_* macros (T_NONE, T_INT, ...) would rename the
   JSON value kinds of scan() above. Nothing below uses those. */
#include <structmember.h>

#define MSG_PLAN_CAPSULE "tierstream._native.message_plan"

enum { V_OFFSET, V_TIMESTAMP, V_KEY, V_VALUE, V_KSIZE, V_VSIZE, V_N };
static const char *const varying_names[V_N] = {
    "offset", "timestamp", "key", "value", "serialized_key_size", "serialized_value_size",
};

typedef struct {
    Py_ssize_t offset;
    PyObject *value; /* owned, never NULL */
} FixedSlot;

typedef struct {
    PyTypeObject *type; /* owned */
    Py_ssize_t n_fixed;
    FixedSlot *fixed;
    /* the fixed values once each, with how many slots hold them: a message
       adds its references to None (6 slots) in one step, not six that each
       wait for the one before */
    Py_ssize_t n_distinct;
    PyObject **distinct; /* borrowed from `fixed` */
    Py_ssize_t *uses;
    Py_ssize_t var_off[V_N];
    PyObject *f_value, *f_key, *f_ts; /* owned bytes */
    unsigned int version; /* the type's tp_version_tag: a change to the type or
                             a base (a new __init__, a property over a slot...)
                             changes it, and messages() then makes none */
} MsgPlan;

static PyObject *empty_tuple;

static void free_msg_plan(MsgPlan *p) {
    if (!p) return;
    if (p->fixed) {
        for (Py_ssize_t k = 0; k < p->n_fixed; k++) Py_DECREF(p->fixed[k].value);
        PyMem_Free(p->fixed);
    }
    PyMem_Free(p->distinct);
    PyMem_Free(p->uses);
    Py_XDECREF(p->type);
    Py_XDECREF(p->f_value);
    Py_XDECREF(p->f_key);
    Py_XDECREF(p->f_ts);
    PyMem_Free(p);
}

static void msg_plan_destructor(PyObject *capsule) {
    free_msg_plan((MsgPlan *)PyCapsule_GetPointer(capsule, MSG_PLAN_CAPSULE));
}

static PyObject *plan_refuse(MsgPlan *p, const char *why, const char *name) {
    /* before the plan lets go of the type, which owns `name` */
    PyErr_Format(PyExc_TypeError, "message_plan: %s%s%s", why, name ? ": " : "", name ? name : "");
    free_msg_plan(p);
    return NULL;
}

/* Values a message may share with every other message of its partition. */
static int shareable(PyObject *v, int depth) {
    if (v == Py_None || PyBool_Check(v) || PyLong_CheckExact(v) || PyFloat_CheckExact(v) ||
        PyUnicode_CheckExact(v) || PyBytes_CheckExact(v))
        return 1;
    /* TP is a namedtuple of (str, int): a tuple subclass without a __dict__ */
    if (PyTuple_Check(v) && Py_TYPE(v)->tp_dictoffset == 0 && depth < 4) {
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(v); k++)
            if (!shareable(PyTuple_GET_ITEM(v, k), depth + 1)) return 0;
        return 1;
    }
    return 0;
}

static PyObject *message_plan(PyObject *self, PyObject *args) {
    PyObject *tmpl, *names;
    if (!PyArg_ParseTuple(args, "OO!", &tmpl, &PyTuple_Type, &names)) return NULL;
    if (PyTuple_GET_SIZE(names) != 3) {
        PyErr_SetString(PyExc_TypeError, "message_plan: field names must be (value, key, ts)");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < 3; k++) {
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(names, k))) {
            PyErr_SetString(PyExc_TypeError, "message_plan: field names must be bytes");
            return NULL;
        }
    }
    PyTypeObject *type = Py_TYPE(tmpl);
    MsgPlan *p = PyMem_Calloc(1, sizeof(MsgPlan));
    if (!p) return PyErr_NoMemory();
    Py_INCREF(type);
    p->type = type;
    p->f_value = Py_NewRef(PyTuple_GET_ITEM(names, 0));
    p->f_key = Py_NewRef(PyTuple_GET_ITEM(names, 1));
    p->f_ts = Py_NewRef(PyTuple_GET_ITEM(names, 2));
    for (int k = 0; k < V_N; k++) p->var_off[k] = -1;
    if (type->tp_new != PyBaseObject_Type.tp_new)
        return plan_refuse(p, "the type has its own __new__", type->tp_name);
    if (type->tp_setattro != PyObject_GenericSetAttr)
        return plan_refuse(p, "the type has its own __setattr__", type->tp_name);
    if (type->tp_itemsize != 0) return plan_refuse(p, "a variable-size type", type->tp_name);
    if (type->tp_dictoffset > 0 || (type->tp_dictoffset < 0 && !(type->tp_flags & Py_TPFLAGS_MANAGED_DICT)))
        return plan_refuse(p, "an instance __dict__ that is not managed", type->tp_name);
    if (type->tp_dictoffset) {
        /* what __init__ put in the instance __dict__ would be missing */
        PyObject *d = PyObject_GenericGetDict(tmpl, NULL);
        if (!d) {
            free_msg_plan(p);
            return NULL;
        }
        Py_ssize_t len = PyDict_GET_SIZE(d);
        Py_DECREF(d);
        if (len) return plan_refuse(p, "the template has instance attributes", NULL);
    }
    PyObject *mro = type->tp_mro;
    if (!mro || !PyTuple_Check(mro)) return plan_refuse(p, "no MRO", type->tp_name);
    Py_ssize_t n_members = 0;
    for (Py_ssize_t b = 0; b < PyTuple_GET_SIZE(mro); b++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, b);
        if (base == &PyBaseObject_Type) continue;
        if (!(base->tp_flags & Py_TPFLAGS_HEAPTYPE))
            return plan_refuse(p, "a base class defined in C", base->tp_name);
        for (PyMemberDef *md = base->tp_members; md && md->name; md++) n_members++;
    }
    p->fixed = PyMem_Calloc(n_members ? n_members : 1, sizeof(FixedSlot));
    if (!p->fixed) {
        free_msg_plan(p);
        return PyErr_NoMemory();
    }
    Py_ssize_t n_slots = 0;
    for (Py_ssize_t b = 0; b < PyTuple_GET_SIZE(mro); b++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, b);
        if (base == &PyBaseObject_Type) continue;
        for (PyMemberDef *md = base->tp_members; md && md->name; md++) {
            if (!strcmp(md->name, "__weakref__") || !strcmp(md->name, "__dict__")) continue;
            if (md->type != T_OBJECT_EX && md->type != T_OBJECT)
                return plan_refuse(p, "a slot that is not an object slot", md->name);
            if (md->flags & READONLY) return plan_refuse(p, "a read-only slot", md->name);
            if (md->offset < (Py_ssize_t)sizeof(PyObject) ||
                md->offset > type->tp_basicsize - (Py_ssize_t)sizeof(PyObject *) ||
                md->offset % sizeof(PyObject *))
                return plan_refuse(p, "a slot outside the object", md->name);
            /* the slot's descriptor must be what attribute access finds */
            /* interned: the type attribute cache keeps the names it is asked for */
            PyObject *name = PyUnicode_InternFromString(md->name);
            if (!name) {
                free_msg_plan(p);
                return NULL;
            }
            PyObject *own = base->tp_dict ? PyDict_GetItemWithError(base->tp_dict, name) : NULL;
            PyObject *found = own ? _PyType_Lookup(type, name) : NULL;
            Py_DECREF(name);
            if (PyErr_Occurred()) {
                free_msg_plan(p);
                return NULL;
            }
            if (!own || Py_TYPE(own) != &PyMemberDescr_Type ||
                ((PyMemberDescrObject *)own)->d_member != md || found != own)
                return plan_refuse(p, "a slot hidden by another attribute", md->name);
            n_slots++;
            int var = -1;
            for (int k = 0; k < V_N; k++)
                if (!strcmp(md->name, varying_names[k])) var = k;
            for (int k = 0; k < V_N; k++)
                if (p->var_off[k] == md->offset) return plan_refuse(p, "a slot twice", md->name);
            for (Py_ssize_t k = 0; k < p->n_fixed; k++)
                if (p->fixed[k].offset == md->offset) return plan_refuse(p, "a slot twice", md->name);
            if (var >= 0) {
                if (p->var_off[var] >= 0) return plan_refuse(p, "a slot twice", md->name);
                p->var_off[var] = md->offset;
                continue;
            }
            PyObject *v = *(PyObject **)((char *)tmpl + md->offset);
            if (!v) continue; /* unset in the template: unset in every message */
            if (!shareable(v, 0))
                return plan_refuse(p, "a template value that is not immutable", md->name);
            p->fixed[p->n_fixed].offset = md->offset;
            p->fixed[p->n_fixed].value = Py_NewRef(v);
            p->n_fixed++;
        }
    }
    for (int k = 0; k < V_N; k++)
        if (p->var_off[k] < 0) return plan_refuse(p, "the type has no slot", varying_names[k]);
    p->distinct = PyMem_Calloc(p->n_fixed ? p->n_fixed : 1, sizeof(PyObject *));
    p->uses = PyMem_Calloc(p->n_fixed ? p->n_fixed : 1, sizeof(Py_ssize_t));
    if (!p->distinct || !p->uses) {
        free_msg_plan(p);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0; k < p->n_fixed; k++) {
        Py_ssize_t d = 0;
        while (d < p->n_distinct && p->distinct[d] != p->fixed[k].value) d++;
        if (d == p->n_distinct) p->distinct[p->n_distinct++] = p->fixed[k].value;
        p->uses[d]++;
    }
    /* nothing but the slots, the weakref list and a __dict__ pointer in the object */
    Py_ssize_t expect = (Py_ssize_t)sizeof(PyObject) + n_slots * (Py_ssize_t)sizeof(PyObject *) +
                        (type->tp_weaklistoffset ? (Py_ssize_t)sizeof(PyObject *) : 0);
    if (expect != type->tp_basicsize)
        return plan_refuse(p, "the object holds more than its slots", type->tp_name);
    /* the lookups above gave the type a version tag (unless the tags ran out) */
    if (!(type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG))
        return plan_refuse(p, "the type has no version tag", type->tp_name);
    p->version = type->tp_version_tag;
    PyObject *cap = PyCapsule_New(p, MSG_PLAN_CAPSULE, msg_plan_destructor);
    if (!cap) free_msg_plan(p);
    return cap;
}

/* o is an exact bytes equal to name (one-byte bytes from a reply are
   CPython's cached singletons: usually the same object) */
static inline int is_name(PyObject *o, PyObject *name) {
    return o == name ||
           (PyBytes_CheckExact(o) && PyBytes_GET_SIZE(o) == PyBytes_GET_SIZE(name) &&
            !memcmp(PyBytes_AS_STRING(o), PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name)));
}

/* n new references to o */
static inline void add_refs(PyObject *o, Py_ssize_t n) {
#if defined(Py_REF_DEBUG) || PY_VERSION_HEX >= 0x030C0000 /* reference totals; immortal objects */
    while (n--) Py_INCREF(o);
#else
    Py_SET_REFCNT(o, Py_REFCNT(o) + n);
#endif
}

/* Python's int(raw) / 1000.0 for 1..15 ASCII digits (exact: below 2**53). */
static inline int parse_ms(PyObject *raw, double *out) {
    if (!PyBytes_CheckExact(raw)) return 0;
    Py_ssize_t len = PyBytes_GET_SIZE(raw);
    if (len < 1 || len > 15) return 0;
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(raw);
    int64_t v = 0;
    for (Py_ssize_t k = 0; k < len; k++) {
        unsigned d = (unsigned)s[k] - '0';
        if (d > 9) return 0;
        v = v * 10 + d;
    }
    *out = (double)v / 1000.0;
    return 1;
}

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

static PyObject *messages(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "messages(plan, flat, i, n, first_offset, out)");
        return NULL;
    }
    MsgPlan *p = PyCapsule_GetPointer(args[0], MSG_PLAN_CAPSULE);
    if (!p) return NULL;
    PyObject *flat = args[1], *out = args[5];
    if (!PyList_Check(flat) || !PyList_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "messages: flat and out must be lists");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[2]);
    if (i == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t n = PyLong_AsSsize_t(args[3]);
    if (n == -1 && PyErr_Occurred()) return NULL;
    int too_big;
    long long offset = PyLong_AsLongLongAndOverflow(args[4], &too_big);
    if (offset == -1 && PyErr_Occurred()) return NULL;
    if (i < 0) {
        PyErr_SetString(PyExc_ValueError, "messages: negative index");
        return NULL;
    }
    /* offsets past int64 (ids up to 0-(2**64-1) are valid): Python makes them */
    if (too_big || (n > 0 && offset > LLONG_MAX - (n - 1))) return PyLong_FromSsize_t(i);
    PyTypeObject *type = p->type;
    if (!(type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) || type->tp_version_tag != p->version)
        return PyLong_FromSsize_t(i); /* changed since the plan: Python makes them */
    newfunc tp_new = type->tp_new;
    for (Py_ssize_t e = 0; e < n; e++, offset++) {
        /* read again for every entry: making a message may run a collection,
           and so any Python code (in theory, one that changes `flat`) */
        Py_ssize_t len = PyList_GET_SIZE(flat);
        if (len - i < 2) break;
        PyObject *nf_obj = PyList_GET_ITEM(flat, i + 1);
        if (!PyLong_CheckExact(nf_obj)) break;
        int overflow;
        long nf = PyLong_AsLongAndOverflow(nf_obj, &overflow);
        if ((nf != 4 && nf != 6) || len - i - 2 < nf) break;
        PyObject **it = &PyList_GET_ITEM(flat, i + 2);
        PyObject *value = it[1], *key = NULL, *ts_raw;
        if (!is_name(it[0], p->f_value) || !PyBytes_CheckExact(value)) break;
        if (nf == 6) {
            if (!is_name(it[2], p->f_key) || !PyBytes_CheckExact(it[3])) break;
            key = it[3];
            if (!is_name(it[4], p->f_ts)) break;
            ts_raw = it[5];
        } else {
            if (!is_name(it[2], p->f_ts)) break;
            ts_raw = it[3];
        }
        double ts;
        if (!parse_ms(ts_raw, &ts)) break;
        Py_ssize_t key_size = key ? PyBytes_GET_SIZE(key) : 0;
        Py_ssize_t value_size = PyBytes_GET_SIZE(value);
        /* held across the allocation (see above); the message takes them */
        Py_INCREF(value);
        key = key ? Py_NewRef(key) : Py_NewRef(Py_None);
        PyObject *m = tp_new(type, empty_tuple, NULL);
        if (!m) {
            Py_DECREF(value);
            Py_DECREF(key);
            return NULL;
        }
        for (Py_ssize_t k = 0; k < p->n_fixed; k++) SLOT(m, p->fixed[k].offset) = p->fixed[k].value;
        for (Py_ssize_t d = 0; d < p->n_distinct; d++) add_refs(p->distinct[d], p->uses[d]);
        SLOT(m, p->var_off[V_KEY]) = key;
        SLOT(m, p->var_off[V_VALUE]) = value;
        PyObject *o;
        if (!(o = PyLong_FromLongLong(offset))) goto fail;
        SLOT(m, p->var_off[V_OFFSET]) = o;
        if (!(o = PyFloat_FromDouble(ts))) goto fail;
        SLOT(m, p->var_off[V_TIMESTAMP]) = o;
        if (!(o = PyLong_FromSsize_t(key_size))) goto fail;
        SLOT(m, p->var_off[V_KSIZE]) = o;
        if (!(o = PyLong_FromSsize_t(value_size))) goto fail;
        SLOT(m, p->var_off[V_VSIZE]) = o;
        if (PyList_Append(out, m) < 0) goto fail;
        Py_DECREF(m);
        i += 2 + nf;
        continue;
    fail:
        Py_DECREF(m); /* its dealloc releases the slots stored so far */
        return NULL;
    }
    return PyLong_FromSsize_t(i);
}

#undef SLOT

static PyMethodDef methods[] = {
    {"compile_plan", compile_plan, METH_O, "Compile a record plan (schemas.fastcheck.native_plan)."},
    {"check_batch", check_batch, METH_VARARGS,
     "check_batch(plan, objs, tail) -> indices of the objects that are not valid."},
    {"group", group, METH_O, "group(events) -> the parts of an aggregate Batch."},
    {"heavy_add", heavy_add, METH_VARARGS,
     "heavy_add(entries, queries) -> accesses added (HeavyHitters.add_grouped's loop)."},
    {"heavy_texts", heavy_texts, METH_VARARGS,
     "heavy_texts(entries, mine, texts): HeavyHitters._merge_texts."},
    {"heavy_compact", heavy_compact, METH_VARARGS,
     "heavy_compact(entries, texts, capacity) -> (entries, texts, cut): the Misra-Gries step."},
    {"scan", scan, METH_VARARGS,
     "scan(plan, value) -> None (take the reference path) or the grouped entry."},
    {"hist_record", hist_record, METH_VARARGS,
     "hist_record(counts, values, mask, shift, half_mag, half, exact, highest) -> (n, lo, hi, sum)."},
    {"message_plan", message_plan, METH_VARARGS,
     "message_plan(template, (v, k, t)) -> the plan messages() makes a partition's messages by."},
    {"messages", (PyCFunction)(void (*)(void))messages, METH_FASTCALL,
     "messages(plan, flat, i, n, first_offset, out) -> the index of the first entry not made."},
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
    PyObject *array_mod = PyImport_ImportModule("array");
    if (!array_mod) return NULL;
    array_q = PyObject_GetAttrString(array_mod, "array");
    Py_DECREF(array_mod);
    if (!array_q) return NULL;
    if (!(empty_tuple = PyTuple_New(0))) return NULL;
    return PyModule_Create(&moduledef);
}
