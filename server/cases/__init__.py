"""Case server: the case state machine and handling deadlines."""
