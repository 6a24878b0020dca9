"""What the tries produced, and keeping it: records, the ledger, parts, the output.

Owns the record of one try, its statuses and the failed-items rule (``outcome``), a failed
mini-batch in one shape (``failures``), the ledger of mini-batch states
behind resume and rerun-failed (``ledger``), Azure's row format and the part files
(``formatting``; the same bytes faster for plain frames: ``fastcsv``), the parts of a task's
tries as ranges of one pack (``packs``), parts that keep rows as data for ``map_batches``
(``structured``), assembling parts into the output in mini-batch order (``output``), the
disks that refuse a write and what to say of them (``storage``), the
fingerprint a resume compares (``fingerprint``), the keys and records of step reuse
(``reuse``), and the values ``run_job`` and ``map_batches`` return (``jobresult``,
``mapresult``).

May import: :mod:`daskprs.errors`, :mod:`daskprs.job` and :mod:`daskprs.inputs`.
"""
