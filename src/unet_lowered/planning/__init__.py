"""``unet plan``: the training set-up chosen from the data and a time budget.

nnU-Net's experiment planning (Isensee et al., Nature Methods 2021) in three steps:
:mod:`~unet_lowered.planning.fingerprint` measures the data set,
:mod:`~unet_lowered.planning.rules` turns the fingerprint (and a measured training
step time, :mod:`~unet_lowered.planning.steptime`) into settings, each with its reason,
and :mod:`~unet_lowered.planning.plan` writes ``plan.json`` and merges a plan with a
config file and flags (defaults < plan < file < flags), recording where each value
came from. :mod:`~unet_lowered.planning.budget` parses durations and stops training
inside a time budget.
"""
