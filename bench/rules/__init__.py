"""The batch-size rules: pure functions of narrow inputs (a batch size, an optimizer section,
a :class:`~bench.rules.batch_schedules.PlanSpec`), never the whole job config.

- plan: the batch plan (steps, epochs, examples and tokens per stage; budgets)
- batch_schedules: batch size over training (constant, increase, warmup, seesaw) and the plan
- lr_schedules: the LR multiplier over steps (constant, cosine, step, wsd)
- lr_scaling: peak LR (and weight decay) from the base LR at a batch size (none, sqrt, linear,
  sde, timescale) and the hyperparameters every rule gives at a batch size
- adam: Adam's batch-size rules (SDE scaling, beta half-lives, the AdamW timescale).
"""
