"""Cascades: call a cheap model first, verify its answer, escalate when the verifier says so.

`llmroute.cascade.verifiers` scores answers; the gateway runs cascades for aliases with a
`cascade:` block (`llmroute.gateway.cascade`)."""
