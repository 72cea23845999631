"""3. Finetuning data: each agent's own D^G and D^C from a labelled debate, and the baselines' sets.

- ``agent_data``: D^G_n, D^C-_n, D^C+_n and the critic mix; the shared and majority-pair sets
- ``rationalization``: STaR's second chance for wrong round-1 answers, with the gold answer as a hint
"""
