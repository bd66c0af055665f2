"""The programme's life cycle at the aggregator: units and beneficiaries, statements signed on
a calendar (and supplementary ones for late evidence), and the records a platform files.

Above :mod:`aggregator.methodology` (which computes and signs one statement when asked) and
the evidence store; docs/programme.md tells the whole life of a reduction.
"""
