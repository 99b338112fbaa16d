"""Evaluation: judges (gold rewards), statistics, sequence-level KL and plots.

- :mod:`.judges`: ``SentimentJudge`` (VADER), ``RewardModelJudge`` (a sequence-classification
  folder) and ``make_judge(spec, device)``;
- :mod:`.stats`: ``mean_ci95``, ``win_rate``, ``distinct_n``, ``reward_accuracy``;
- :mod:`.kl`: summed response log-probs and the Monte-Carlo sequence KL to the reference;
- :mod:`.plots`: the reward/KL frontier and training curves (matplotlib, imported lazily).

Submodules are imported on use so that ``import aligndistil_cli.evaluation`` stays cheap.
"""
