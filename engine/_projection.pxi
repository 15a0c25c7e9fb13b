# Part of engine/_core.pyx (included there; one extension module): SELECT projection, column extraction for the SQL/InfluxDB sinks, and Record.

# ---------------------------------------------------------------- SELECT

@cython.no_gc
cdef class Projection:
    """Builds the output object of a SELECT (8.5)."""
    cdef bint star
    cdef readonly bint whole  # `SELECT *` alone (or no SELECT): the output is the input
    cdef tuple keys
    cdef tuple exprs
    cdef object star_from     # Expr whose object `*` copies; None: the event itself
    # FOREACH (`many`): one output per element of `each` for which `incase`
    # is TRUE. The output is built by `per_item` (a DO with `*`, on the event
    # with the element bound to `alias`), else from `keys`/`exprs` with one
    # mode per item (`modes`: 0 computed once per event, 1 evaluated on the
    # element itself, 2 on the event with the element bound; see
    # engine.language.compiler._foreach_mode), else it is the element.
    cdef readonly bint many
    cdef object each
    cdef str alias
    cdef object per_item
    cdef object incase
    cdef bytes modes
    cdef int incase_mode
    cdef bint needs_env, per_event

    def __init__(self, bint star, keys, exprs, star_from=None, each=None, alias=None,
                 per_item=None, incase=None, modes=None, int incase_mode=2):
        self.star = star
        self.keys = tuple(keys)
        self.exprs = tuple(exprs)
        self.star_from = star_from
        self.many = each is not None
        self.each = each
        self.alias = alias
        self.per_item = per_item
        self.incase = incase
        self.modes = modes
        self.incase_mode = incase_mode
        if modes is not None and len(modes) != len(self.keys):
            raise ValueError("one mode per FOREACH item")
        self.needs_env = per_item is not None or (incase is not None and incase_mode == 2) \
            or (modes is not None and 2 in modes)
        self.per_event = modes is not None and 0 in modes
        self.whole = star and not self.keys and star_from is None and not self.many

    cdef list build_many(self, object ev, bint copy=True):
        """FOREACH: the outputs, one per element that passes INCASE."""
        cdef list out = []
        cdef dict env = None, row
        cdef list pre = None
        cdef Py_ssize_t i, n = len(self.keys)
        cdef const unsigned char* modes = NULL
        arr = (<Expr>self.each).value(ev)
        if not PyList_Check(arr):
            return out
        if self.needs_env:
            # The element is reached by name: a shallow copy of the event's
            # top level with the alias bound (it shadows a member of that name).
            env = dict(<dict>ev) if PyDict_Check(ev) else {}
        if self.modes is not None:
            modes = self.modes
            if self.per_event:
                pre = [None] * n
                for i in range(n):
                    if modes[i] == 0:
                        pre[i] = (<Expr>self.exprs[i]).value(ev)
        for el in <list>arr:
            if env is not None:
                env[self.alias] = el
            if self.incase is not None and (<Expr>self.incase).truth(
                    el if self.incase_mode == 1 else env) != T_TRUE:
                continue
            if modes != NULL:
                row = {}
                for i in range(n):
                    if modes[i] == 0:
                        v = pre[i]
                    elif modes[i] == 1:
                        v = (<Expr>self.exprs[i]).value(el)
                    else:
                        v = (<Expr>self.exprs[i]).value(env)
                    if v is _MISSING:
                        continue
                    if copy and (PyDict_Check(v) or PyList_Check(v)):
                        v = deep_copy(v)
                    row[self.keys[i]] = v
                out.append(row)
            elif self.per_item is not None:
                out.append((<Projection>self.per_item).build(env, copy))
            elif PyDict_Check(el):
                out.append(deep_copy(el) if copy else (<dict>el).copy())
            else:
                out.append({self.alias: deep_copy(el) if copy else el})
        return out

    cdef object output(self, object ev, bint copy=True):
        """`build`, or for FOREACH the list of outputs."""
        if self.many:
            return self.build_many(ev, copy)
        return self.build(ev, copy)

    cdef dict build(self, object ev, bint copy=True):
        """`copy`: copy containers taken from the event, so the output never
        aliases a caller's event. Events the core decoded itself (the raw
        forms) belong to nobody else and are not copied."""
        cdef dict out
        cdef Py_ssize_t i
        if self.star and self.star_from is not None:
            ev_star = (<Expr>self.star_from).value(ev)
            if PyDict_Check(ev_star):
                # Always copied: a member of the event, shared with other rules.
                out = {k: deep_copy(v) for k, v in (<dict>ev_star).items()}
            else:
                out = {}
        elif self.star and PyDict_Check(ev):
            if copy:
                out = {k: deep_copy(v) for k, v in (<dict>ev).items()}
            else:
                out = (<dict>ev).copy()
        else:
            out = {}
        for i in range(len(self.keys)):
            v = (<Expr>self.exprs[i]).value(ev)
            if v is _MISSING:
                continue
            if copy and (PyDict_Check(v) or PyList_Check(v)):
                v = deep_copy(v)
            out[self.keys[i]] = v
        return out


# ---------------------------------------------------------------- column mappings

@cython.no_gc
cdef class Columns:
    """Values of a destination's column mappings for many rule outputs at once.

    Each column has a json_key: the output's literal top-level key of that
    name if present (an unaliased `SELECT a.b` emits the key "a.b"), else
    the path walked into the output. Missing values are None (SQL NULL).
    With `json_containers`, objects and arrays become JSON text."""
    cdef tuple literal_keys
    cdef tuple paths
    cdef Py_ssize_t n

    def __init__(self, literal_keys, steps_list):
        self.literal_keys = tuple(literal_keys)
        self.paths = tuple(Path(st) if len(st) <= 16 else LongPath(st) for st in steps_list)
        self.n = len(self.literal_keys)

    def rows(self, list payloads, bint json_containers=False):
        cdef list out = []
        cdef list row
        cdef PyObject* ptr
        cdef Py_ssize_t i
        for p in payloads:
            row = []
            for i in range(self.n):
                v = _MISSING
                if PyDict_Check(p):
                    ptr = PyDict_GetItem(p, self.literal_keys[i])
                    if ptr != NULL:
                        v = <object>ptr
                if v is _MISSING:
                    v = (<Expr>self.paths[i]).value(p)
                if v is _MISSING:
                    v = None
                elif json_containers and (PyDict_Check(v) or PyList_Check(v)):
                    v = orjson.dumps(v).decode()
                row.append(v)
            out.append(tuple(row))
        return out


# ---------------------------------------------------------------- records

# Outputs up to this size are copied out of orjson's buffer (Record.json_bytes);
# pymalloc serves objects of up to 512 bytes.
cdef enum:
    _SMALL_JSON = 480


cdef bytes _dumps_kept(object payload):
    """orjson.dumps(payload), for a result the caller keeps: orjson
    over-allocates its output and shrinks it in place, so results kept alive
    (a file batch, messages awaiting confirms, a Kafka write being packed)
    cost a fresh malloc chunk each (~2 us). A small one is copied into an
    exact-size object and the buffer freed for the next dumps (~0.3 us)."""
    cdef bytes out = orjson.dumps(payload)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(out)
    if n <= _SMALL_JSON:
        return PyBytes_FromStringAndSize(PyBytes_AS_STRING(out), n)
    return out

@cython.final
@cython.freelist(1024)
cdef class Record:
    """One rule output on its way to one action (the sink contract's item;
    see engine.destinations.base). A C class because the runtime makes one
    per output and action: building it is a fraction of a dataclass's cost.

    `raw`, when set, is the exact JSON text of `payload`: the notification
    as it arrived, for a rule that forwards it whole (`SELECT *`). Sinks that
    send JSON send `json_bytes()`, so such outputs keep the input's numbers
    as written, key order and escapes, and are not re-encoded; sinks
    that need values (SQL columns, InfluxDB) read `payload`. Sinks never
    modify `payload`: one decoded notification may be shared by several
    records. A record made with `payload` None and `raw` set decodes `raw`
    when `payload` is first read (the runtime does so when the rule set
    did not decode the whole notification, so sinks that send `raw` never
    pay for it)."""
    cdef object _payload           # the rule's output (a JSON object)
    cdef public object key         # device id: ordering / partitioning key, or None
    cdef public object event_time  # notification event_time, e.g. 20151212T121212Z, or None
    cdef public object rule_id
    cdef public object action_id
    cdef public object raw         # the exact JSON of payload (bytes), when known

    def __init__(self, payload, key=None, event_time=None, rule_id=None, action_id=None,
                 raw=None):
        self._payload = payload
        self.key = key
        self.event_time = event_time
        self.rule_id = rule_id
        self.action_id = action_id
        self.raw = raw

    @property
    def payload(self):
        if self._payload is None and self.raw is not None:
            self._payload = orjson.loads(self.raw)
        return self._payload

    @payload.setter
    def payload(self, value):
        self._payload = value

    def json_bytes(self):
        """The output as JSON: `raw` if known, else `payload` encoded."""
        if self.raw is not None:
            return self.raw
        return _dumps_kept(self._payload)

    def json_value(self):
        """The output to embed in a larger document encoded with orjson
        (an envelope, a backlog entry): `raw` as is, else `payload`."""
        if self.raw is not None:
            return orjson.Fragment(self.raw)
        return self._payload

    def _fields(self):
        return (self.payload, self.key, self.event_time, self.rule_id, self.action_id, self.raw)

    def __eq__(self, other):
        if type(other) is not Record:
            return NotImplemented
        return self._fields() == (<Record>other)._fields()

    __hash__ = None

    def __repr__(self):
        return ("Record(payload=%r, key=%r, event_time=%r, rule_id=%r, action_id=%r, raw=%r)"
                % self._fields())

    def __reduce__(self):
        return (Record, self._fields())
