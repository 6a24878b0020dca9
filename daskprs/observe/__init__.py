"""What a person reads about a run: Azure-style logs, progress, the resource monitor.

Owns the run's log files, progress overview and try report (``logs``; the try report kept
in step with the ledgers after a crash: ``processed``), the live progress
displays the runner feeds (``progress``: plain lines, a rich bar, a Jupyter display), the
per-process resource monitor (``monitor``), reading a run directory back (``runview``), the
``daskprs status`` screen (``status``) and the ``daskprs report`` page (``report``, with its
matplotlib plots in ``plots``).

May import: :mod:`daskprs.errors`, :mod:`daskprs.job`, :mod:`daskprs.inputs` and
:mod:`daskprs.results`.
"""
