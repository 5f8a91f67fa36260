#!/usr/bin/env python3
"""A stand-in for `scalelab up`, to test the harness without the real services.

Called as `fake_up.py up --config FILE --data-dir DIR`. Starts one tiny HTTP server per instance of
the topology file (GET /health -> 200; POST /login -> {"token": $SCALELAB_ADMIN_PASSWORD}), writes
DIR/instances.json, restarts a server that dies (rewriting the file), and on SIGTERM stops them all
and exits 0. With FAKE_UP_FAIL set, it fails at once as `up` does when a port is taken.
"""
import json, os, signal, subprocess, sys, time, tomllib

SERVER = r'''
import http.server, json, os, sys
port = int(sys.argv[1])
class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        healthy = self.path in ("/health", "/_lb/health")
        self.reply(200, {"status": "ok"}) if healthy else self.reply(404, {})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        ok = self.path == "/login" and body.get("password") == os.environ["SCALELAB_ADMIN_PASSWORD"]
        self.reply(200, {"token": body["password"]}) if ok else self.reply(401, {"error": "unauthorized"})
    def log_message(self, *_):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
print(f"listening on {port}", flush=True)
server.serve_forever()
'''

if os.environ.get("FAKE_UP_FAIL"):
    print("Error: port 5000 (gateway gateway-1) is already in use", file=sys.stderr, flush=True)
    sys.exit(1)

args = sys.argv[1:]
assert args[0] == "up", args
config = args[args.index("--config") + 1]
data_dir = args[args.index("--data-dir") + 1]
with open(config, "rb") as f:
    topology = tomllib.load(f)
os.makedirs(data_dir, exist_ok=True)

instances = []
for role, ports in topology["instances"].items():
    if role == "host":
        continue
    for n, port in enumerate(ports, 1):
        instances.append({"role": role, "id": f"{role}-{n}", "url": f"http://127.0.0.1:{port}", "port": port})
processes = {}

def spawn(instance):
    processes[instance["id"]] = subprocess.Popen([sys.executable, "-c", SERVER, str(instance["port"])])
    instance["pid"] = processes[instance["id"]].pid

def publish():
    path = os.path.join(data_dir, "instances.json")
    with open(path + ".tmp", "w") as f:
        json.dump(instances, f)
    os.rename(path + ".tmp", path)

def stop(*_):
    for process in processes.values():
        process.terminate()
    for process in processes.values():
        process.wait()
    print("[up] all instances stopped", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
for instance in instances:
    spawn(instance)
publish()
print("[up] fake up ready", flush=True)
while True:
    time.sleep(0.02)
    for instance in instances:
        code = processes[instance["id"]].poll()
        if code is not None:
            print(f"[up] {instance['id']} exited ({code}); restarting", flush=True)
            spawn(instance)
            publish()
