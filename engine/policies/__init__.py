"""Delivery policies: flow control, the durable backlog, retry/probing and
dead-letter entries. Standalone: nothing here imports `engine.runtime`, so
the runtime can import these without a cycle. See docs/RELIABILITY.md.

    flowcontrol   FlowControl(policies).limiter_for(rule, action, channel)
    backlog       Backlog(path, dead_letters, policies): append/peek/ack/expire
    retry         RetryPolicy, Backoff (exponential, full jitter, probing)
    deadletters   DeadLetterWriter protocol and the entry shape
    outcome       write_sorted(): one write, sorted into delivered / dead / retry
    drain         drain_step(): one backlog -> sink step using all of the above
"""

from engine.policies.backlog import ActionStats, Appended, Backlog
from engine.policies.deadletters import DeadLetterWriter
from engine.policies.drain import Step, drain_step
from engine.policies.flowcontrol import FlowControl, Limiter
from engine.policies.outcome import Outcome, write_sorted
from engine.policies.retry import Backoff, RetryPolicy

__all__ = ["ActionStats", "Appended", "Backlog", "Backoff", "DeadLetterWriter", "FlowControl",
           "Limiter", "Outcome", "RetryPolicy", "Step", "drain_step", "write_sorted"]
