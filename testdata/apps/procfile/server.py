"""Started through the Procfile's web line."""
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

greeting = sys.argv[2] if len(sys.argv) > 2 else "hi"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = (greeting + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
