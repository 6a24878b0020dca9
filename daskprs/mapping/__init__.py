"""``daskprs.map_batches``: a parallel step over a user's own Dask collection (notebooks).

Owns the generated entry script that calls pickled functions (``entry``), staging the
partitions of a Dask DataFrame or bag to files in the run directory (``staging``), and the
call itself (``run``): it plans one mini-batch per staged partition and runs them through the
normal runner, so slots, kill-on-timeout, retries, budgets, the ledger and resume apply as
for a job file.

May import: anything (it sits on top, beside :mod:`daskprs.api`).
"""
