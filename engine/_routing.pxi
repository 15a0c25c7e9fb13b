# The pipeline's per-match loop (engine.runtime.pipeline), compiled: it runs
# once per matched event and action, and in Python it cost about as much as
# evaluating the rules.

cdef inline void _add_count(dict counts, object key, Py_ssize_t n):
    cdef PyObject* old = PyDict_GetItem(counts, key)
    counts[key] = (<object>old + n) if old != NULL else n


cdef inline Record _new_record(object payload, object key, object event_time, object rule_id,
                               object action_id, object raw):
    cdef Record rec = Record.__new__(Record)
    rec._payload = payload
    rec.key = key
    rec.event_time = event_time
    rec.rule_id = rule_id
    rec.action_id = action_id
    rec.raw = raw
    return rec


cdef inline void _add_record(dict per_runner, object runner, Record rec):
    cdef PyObject* found = PyDict_GetItem(per_runner, runner)
    if found != NULL:
        (<list>found).append(rec)
    else:
        per_runner[runner] = [rec]


def route_records(list items, list results, dict routes):
    """Records from `results`, RuleSet.route_raw_many's for `items`: every
    output of a match becomes one Record per runner of its rule (`routes`:
    rule -> tuple of runners, each with an `action_id`; a FOREACH output
    list, one per element; a whole-notification output, the event with the
    input bytes as `raw`). Returns (per_runner, matched, fanned, malformed):
    runner -> [Record] in input order, rule -> matched events, rule ->
    FOREACH outputs beyond one per matched event, [(input, reason)] of the
    malformed inputs."""
    cdef dict per_runner = {}, matched = {}, fanned = {}
    cdef list malformed = []
    cdef Py_ssize_t i, n = len(items)
    cdef PyObject* found
    cdef object res, rule, output, one, runner, payload, exact, key, event_time, event
    cdef tuple row, match, runners
    cdef tuple none = ()
    if len(results) != n:
        raise ValueError(f"{n} inputs but {len(results)} results")
    for i in range(n):
        res = results[i]
        if res is None:
            continue
        if type(res) is not tuple:  # a MalformedEvent
            malformed.append((items[i], res.reason))
            continue
        row = <tuple>res
        event, key, event_time = row[0], row[1], row[2]
        for m in row[3]:
            match = <tuple?>m
            rule, output = match[0], match[1]
            _add_count(matched, rule, 1)
            found = PyDict_GetItem(routes, rule)
            runners = <tuple?>found if found != NULL else none
            if type(output) is list:
                _add_count(fanned, rule, len(<list>output) - 1)
                for one in <list>output:
                    for runner in runners:
                        _add_record(per_runner, runner, _new_record(
                            one, key, event_time, rule, runner.action_id, None))
                continue
            if type(output) is bytes:  # the input, forwarded as it arrived
                payload, exact = event, output
            else:
                payload, exact = output, None
            for runner in runners:
                _add_record(per_runner, runner, _new_record(
                    payload, key, event_time, rule, runner.action_id, exact))
    return per_runner, matched, fanned, malformed
