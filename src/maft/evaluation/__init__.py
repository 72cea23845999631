"""5. Evaluation: how well and how diversely the agents answer held-out problems.

- ``metrics``: accuracy with standard error, a debate's per-round and per-agent metrics, what an iteration records
- ``diversity``: answer agreement, embedding dissimilarity, cross-agent likelihoods and KL
- ``single_agent``: k samples per problem from one model (``maft evaluate``)
- ``transfer``: a finished run's agents debate another task's held-out problems (``maft transfer``)
"""
