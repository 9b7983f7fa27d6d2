"""Tasks: the simulated labeler world every stage is measured on (see docs/tasks.md).

base.py      the Task protocol, `load_task("module:attr")`, DEFAULT_TASK
labeler.py   Plackett-Luce rankings and a pairwise judge over any task's gold score
generate.py  one command writing all data files for a seed (`python -m rlhf_dist.tasks.generate`)
instruct/    the built-in task
Standard library only; importing this package imports nothing else.
"""
