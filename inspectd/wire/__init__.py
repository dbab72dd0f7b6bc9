"""What travels on ZeroMQ: the verdict message and its topics (`message`), the publisher
(`publish`) and CurveZMQ keys (`curve`). Shared by the daemon and every client."""
