"""Running one parallel step on Dask: the policy, the driver, the worker, the child.

Owns the retry, timeout and budget policy as a pure state machine (``supervisor``), the
driver loop that submits tries and carries out its instructions (``runner``), one try as a
Dask task (``worker``), the slot that owns the entry-script process and its deadlines
(``slot``), that process (``child``) and the messages between them (``wire``), getting a
Dask client (``cluster``) and the TLS certificates of a ``tls://`` scheduler (``tls``).

May import: every layer below (:mod:`daskprs.errors`, :mod:`daskprs.job`,
:mod:`daskprs.inputs`, :mod:`daskprs.results`, :mod:`daskprs.observe`). ``child`` and
``wire`` import no Dask: they run in the entry-script process.
"""
