"""Profile your own models: call them on sampled prompts, grade the answers (reference graders or an
LLM judge), and write a long-format routing table (`llmroute profile`).

Modules: `prompts` (read prompts, from a file or the trace store; a diverse subset), `graders`
(exact, normalized, choice, number, regex, code), `judge` (pinned judge prompts and parsing),
`runner` (calls, cost cap, resume journal, table), `cli` (the command).
"""
