"""The pieces of LGUN training, one concern per module; ``lgun.train.train`` runs them.

``config`` (TrainConfig and its sub-configs), ``fields`` (their checks), ``warmstart``
(starting model, least-squares REC), ``optim`` (optimiser, EMA), ``schedule`` (progress and
learning rate), ``checkpoint`` (exact resume), ``lineage`` (what weights record about their
run), ``publish`` (validation, publishing on improvement), ``progress`` (the bar).
"""
