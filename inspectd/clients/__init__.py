"""What line controllers, PLC bridges and the CLI use to talk to a running daemon: the
verdict subscriber (`subscribe`), the control request (`control`) and reconnect backoff.
Nothing here imports the daemon's side."""
