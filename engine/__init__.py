"""The escalation engine: pure functions from a normalized Ticket to a Decision and a WriteBack.

engine.policy loads and compiles the policy, engine.escalate.evaluate decides, engine.plan.plan diffs against
the observed ticket, engine.report explains. No I/O beyond loading the policy file, no clock reads.
"""

from engine import celcore

celcore.install()
