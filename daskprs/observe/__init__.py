"""What a person reads about a run: Azure-style logs, progress, the resource monitor.

Owns the run's log files, progress overview and try report (``logs``) and the per-process
resource monitor (``monitor``).

May import: :mod:`daskprs.errors`, :mod:`daskprs.job`, :mod:`daskprs.inputs` and
:mod:`daskprs.results`.
"""
