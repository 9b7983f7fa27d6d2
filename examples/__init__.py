"""Example plug-in tasks (see docs/tasks.md). A package so that `examples.echo_task:task` resolves."""
