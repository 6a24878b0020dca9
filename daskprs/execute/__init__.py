"""Running one parallel step on Dask: the policy, the driver, the worker, the child.

Owns the one function that runs a parallel step, for the pipeline and for ``map_batches``
(``step``: ledger read once, session, checks, driver loop, assembly, a frozen outcome), what
a session of a run has left to do (``resume``: pure), the retry, timeout and budget policy
as a pure state machine (``supervisor``), the driver loop that submits tries and carries out
its instructions (``runner``), what every try of a step run needs on a worker and the
template of its processes (``context``), one try as a Dask task (``worker``), the per-step
worker plugin that holds a worker's slots and the driver's lease (``pool``), the slot that
owns the entry-script process (``slot``) and the pure clock of its deadlines
(``deadlines``), that process (``child``) and the messages between them (``wire``), tries
handed back by a worker that leaves (``handback``), the step's folder where workers leave
claims, hand-backs and the lease, in the run directory or a staging store (``store``), the
logs of workers without the run directory uploaded and brought home (``stagedlogs``), the
code folder shipped to workers that cannot see it (``codefolder``), the check of the entry
script's imports before the first mini-batch (``preflight``), the GPUs a worker sees and the
entry-script processes a node runs (``devices``), getting a Dask client (``cluster``),
starting it in advance and taking it when a step needs it (``lazycluster``), a new step's
entry-script processes started by the driver before the embedded cluster's workers take them
(``warm``), the TLS certificates of a ``tls://`` scheduler (``tls``), and the watchdog a
command step's shell runs under, which ends the command with a killed driver, and the ending
of an earlier session's command still running (``commandguard``).

May import: every layer below (:mod:`daskprs.errors`, :mod:`daskprs.paths`,
:mod:`daskprs.settings`, :mod:`daskprs.rundir`, :mod:`daskprs.job`, :mod:`daskprs.inputs`,
:mod:`daskprs.results`, :mod:`daskprs.observe`). ``child``, ``wire`` and ``deadlines``
import no Dask: they run in the entry-script process, maybe in another interpreter.
"""
