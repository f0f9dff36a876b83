"""A stdlib-only app that reports what it can see, for pier's isolation tests."""
import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            if url.path == "/read":
                with open(q["path"], "rb") as f:
                    body = f.read(4096)
            elif url.path == "/list":
                body = "\n".join(sorted(os.listdir(q["path"]))).encode()
            elif url.path == "/whoami":
                body = f"{os.getuid()}:{os.getgid()}".encode()
            elif url.path == "/env":
                body = json.dumps(dict(os.environ)).encode()
            elif url.path == "/connect":
                host, port = q["addr"].rsplit(":", 1)
                with socket.create_connection((host, int(port)), timeout=2):
                    body = b"connected"
            elif url.path == "/write":
                with open(q["path"], "w") as f:
                    f.write("written")
                body = b"written"
            else:
                body = b"probe ok"
        except Exception as e:  # the test reads the failure
            self.send_response(500)
            self.end_headers()
            self.wfile.write(f"{type(e).__name__}: {e}".encode())
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
