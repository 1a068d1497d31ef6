"""The call core, the same for every carrier: a call's lifecycle from plan to final write
(`lifecycle`), its lease (`lease`), and the conversation it runs (`session`, which
orchestrates `turn_taking`, `agent`, `interruptions`, `transcript`, `idle` and `keypad`)."""
