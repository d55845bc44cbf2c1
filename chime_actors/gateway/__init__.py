"""Inside a gateway process: the WebSocket server and its lightweight actors."""
