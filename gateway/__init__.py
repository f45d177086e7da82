"""The inference gateway: takes every prediction call at /v1/infers/<service_id>.

It runs outside Django's request cycle, one process per core, and never queries
PostgreSQL per call: each process keeps the routing table in memory, patched as
the database announces changes (LISTEN/NOTIFY, see gateway.keeper), and flushes
call statistics once a second.
"""
