"""The process runtime shared by every actor: the supervisor that runs a set of actors in
one process, logs, metrics, child processes."""
