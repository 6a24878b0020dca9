"""The job file, read into a frozen model: ``load_job(path) -> Job``.

Owns the YAML schema and its checks (``schema``), input and output bindings (``binding``),
pipeline nodes and components (``nodes``), a node built into a step (``build``), outputs
that would write over each other (``clashes``), runtime settings and arguments (``runtime``),
``--set`` overrides (``sets``), the ``daskprs.yaml`` configuration (``files``), a v1
``ParallelRunConfig`` translated into a parallel job (``v1``), a job built with Azure's Python
SDK (or given as a mapping) made into a job document (``sdk``), and the values every later
layer reads (``model``). ``load`` puts them together.

May import: :mod:`daskprs.errors`, :mod:`daskprs.paths`, :mod:`daskprs.settings` and
:mod:`daskprs.rundir`. Reads files; starts nothing.
"""
