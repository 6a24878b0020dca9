"""A step's major input, from its files to the data one mini-batch holds.

Owns the MLTable file (``mltable``, ``tablemodel``), listing an input's files (``listing``)
through one cache of fsspec filesystems (``filesystems``), planning mini-batches from metadata
(``plan``, ``cuts``) into picklable descriptors (``batches``; a staged partition of a user's
Dask collection is one too) and the plan as versioned JSON (``planfile``), and, inside a worker,
reading one descriptor's data (``readers``; tables in ``tableread``) with the MLTable
transformations, filters and partition columns (``transforms``, ``filters``, ``partitions``).

May import: :mod:`daskprs.errors`, :mod:`daskprs.paths`, :mod:`daskprs.rundir` and
:mod:`daskprs.job`. No Dask here: the child process that runs entry scripts imports ``readers``
and must stay light.
"""
