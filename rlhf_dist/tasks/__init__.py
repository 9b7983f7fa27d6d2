"""Tasks: the simulated labeler world every stage is measured on (see docs/tasks.md).

base.py      the Task protocol, `load_task("module:attr")`, DEFAULT_TASK
labeler.py   Plackett-Luce rankings and a pairwise judge over any task's gold score
generate.py  writes all data files of a task for a seed (the `rlhf-dist task-data` command: recipes/task_data.py)
instruct/    the built-in task
Standard library only; importing this package imports nothing else.
"""
