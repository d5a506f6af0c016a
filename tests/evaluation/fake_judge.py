"""A fake OpenAI-compatible chat server on 127.0.0.1 for the judge tests: `reply(body, n)` gives,
for the `n`-th request (from 0) and its JSON body, `(status, content or error message)`."""

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


@contextlib.contextmanager
def fake_judge(reply):
    """Yields `(base_url, received)`; `received` collects each request's path, auth and body."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            status, text = reply(body, len(received) - 1)
            if status == 200:
                payload = {"choices": [{"message": {"role": "assistant", "content": text}}]}
            else:
                payload = {"error": {"message": text, "type": "invalid_request_error"}}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", received
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
