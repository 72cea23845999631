"""2. The debate: agents answer (round 1), critics answer again after seeing the others (rounds 2..M),
and the final round's majority vote labels each problem.

- ``protocol``: :func:`debate` and its transcript (:class:`Turn`); :func:`run_debate` with a run's settings
- ``voting``: answers compared by equivalence, the majority, tie-breaking, which answer a turn votes with
"""
