"""What ``daskprs.map_batches`` did: its verdict, counts, failed partitions and output.

:class:`MapResult` is a plain value built from the ledger; its :attr:`MapResult.output` turns
the committed structured parts (:mod:`daskprs.results.structured`) into a Dask DataFrame or
bag, one partition per successful mini-batch, in partition order. Dask is imported only there.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from typing import Any

from daskprs.errors import JobFailed, UserInputError
from daskprs.results.failures import FailedMiniBatch, failed_message
from daskprs.results.structured import read_part

__all__ = ["FailedPartition", "MapResult"]

# Failed partitions shown in the HTML table; the rest are counted.
_HTML_ROWS = 20


# A failed partition is a failed mini-batch (its id is the partition's index: ``.partition``).
FailedPartition = FailedMiniBatch


def _part_kind(value: Any) -> str:
    return "list" if isinstance(value, list) else "DataFrame"


def _read_as(path: str, partition: int, kind: str) -> Any:
    value = read_part(path)
    if _part_kind(value) != kind:
        raise TypeError(
            f"run() returned a {_part_kind(value)} for partition {partition} but a {kind} for "
            "the first partition; the output of map_batches needs run() to return the same "
            "kind (always a DataFrame, or always a list) every time"
        )
    return value


@dataclass
class MapResult:
    """The result of :func:`daskprs.map_batches`.

    Attributes
    ----------
    run_dir : str
        The run directory: the ledger, the logs, the staged input and the parts.
    failure : str or None
        Why the run failed (a budget, init() failing everywhere, every partition failing),
        or None.
    summary : dict
        ``total``, ``done``, ``failed``, ``cancelled`` mini-batches; ``succeeded_items`` and
        ``failed_items``.
    failed : list of FailedPartition
        The partitions absent from the output, with their errors, in partition order.
    parts : dict of int to str
        The committed part file of every partition in the output, by partition.
    seconds : float
        Wall time of this call.
    """

    run_dir: str
    failure: str | None
    summary: dict[str, int]
    failed: list[FailedPartition] = field(default_factory=list)
    parts: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the run succeeded (failed partitions within the budgets)."""
        return self.failure is None

    @property
    def status(self) -> str:
        """``"succeeded"``, ``"succeeded with failures"`` or ``"failed"``."""
        if self.failure is not None:
            return "failed"
        return "succeeded with failures" if self.failed else "succeeded"

    @property
    def output_paths(self) -> list[str]:
        """The part files behind :attr:`output`, in partition order."""
        return [self.parts[k] for k in sorted(self.parts)]

    def raise_for_status(self, allow_failed: bool = True) -> None:
        """Raise :class:`daskprs.errors.JobFailed` if the run failed (a budget stopped it,
        ``init()`` failed everywhere, no partition succeeded); with ``allow_failed=False``
        also when any partition failed (within the budgets), naming them."""
        if self.failure is not None:
            raise JobFailed(self.failure)
        if not allow_failed and self.failed:
            raise JobFailed(failed_message(self.failed, "partition"))

    @property
    def output(self) -> Any:
        """The returned rows as a Dask collection, in partition order.

        A Dask DataFrame when ``run()`` returned DataFrames, a Dask bag when it returned lists;
        one partition per successful mini-batch (failed and empty partitions are absent).
        Reading happens when it is computed, on the cluster (its workers must see the run
        directory, or the staging store of a run with ``staging``).

        Raises
        ------
        UserInputError
            No partition produced output.
        """
        paths = self.output_paths
        if not paths:
            raise UserInputError(
                f"no partition produced output (see result.failed and {self.run_dir}/logs)"
            )
        first = read_part(paths[0])
        kind = _part_kind(first)
        pairs = [(p, k, kind) for k, p in sorted(self.parts.items())]
        if kind == "list":
            import dask.bag as db
            from dask import delayed

            return db.from_delayed([delayed(_read_as)(*a) for a in pairs])
        import dask.dataframe as dd

        return dd.from_map(
            _read_as,
            [a[0] for a in pairs],
            [a[1] for a in pairs],
            [kind] * len(pairs),
            meta=first.iloc[:0],
            enforce_metadata=False,
        )

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"MapResult({self.status}: {s.get('done', 0)} of {s.get('total', 0)} partitions "
            f"done, {s.get('failed', 0)} failed, {s.get('cancelled', 0)} cancelled; "
            f"run_dir={self.run_dir!r})"
        )

    def _repr_html_(self) -> str:
        e = html.escape
        s = self.summary
        folder = os.path.dirname(self.output_paths[0]) if self.parts else "-"
        colour = {"succeeded": "#1a7f37", "failed": "#cf222e"}.get(self.status, "#9a6700")
        rows = [
            ("status", f'<b style="color:{colour}">{e(self.status)}</b>'),
            (
                "partitions",
                f"{s.get('total', 0)}: {s.get('done', 0)} done, {s.get('failed', 0)} failed, "
                f"{s.get('cancelled', 0)} cancelled",
            ),
            (
                "items",
                f"{s.get('succeeded_items', 0)} succeeded, {s.get('failed_items', 0)} failed",
            ),
            ("output", f"{len(self.parts)} parts in <code>{e(folder)}</code>"),
            ("run directory", f"<code>{e(self.run_dir)}</code>"),
            ("time", f"{self.seconds:.1f} s"),
        ]
        if self.failure is not None:
            rows.insert(1, ("failure", f"<pre>{e(self.failure)}</pre>"))
        body = "".join(
            f'<tr><th style="text-align:left">{k}</th><td style="text-align:left">{v}</td></tr>'
            for k, v in rows
        )
        out = f"<div><b>daskprs.map_batches</b><table>{body}</table>"
        if self.failed:
            lines = "".join(
                f"<tr><td>{f.partition}</td><td>{e(f.status)}</td><td>{f.tries}</td>"
                f'<td style="text-align:left"><code>{e(f.error)}</code></td></tr>'
                for f in self.failed[:_HTML_ROWS]
            )
            more = (
                f"<p>... and {len(self.failed) - _HTML_ROWS} more</p>"
                if len(self.failed) > _HTML_ROWS
                else ""
            )
            out += (
                "<p>Failed partitions (absent from the output):</p><table><tr>"
                "<th>partition</th><th>status</th><th>tries</th><th>error</th></tr>"
                f"{lines}</table>{more}"
            )
        return out + "</div>"
