"""A processing script for the sim tests: copies its input files to its output, upper-cased.

--fail-on-host N: exit 3 on host algo-N-*; --message: write /opt/ml/output/message; --sleep S.
"""
import argparse
import json
import os
import sys
import time

base = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")  # sim: this host's /opt/ml
parser = argparse.ArgumentParser()
parser.add_argument("--input", default=f"{base}/processing/input/data")
parser.add_argument("--output", default=f"{base}/processing/output/result")
parser.add_argument("--fail-on-host", type=int, default=0)
parser.add_argument("--message", default="")
parser.add_argument("--sleep", type=float, default=0)
args = parser.parse_args()
resource = json.load(open(os.path.join(base, "config", "resourceconfig.json")))
job = json.load(open(os.path.join(base, "config", "processingjobconfig.json")))
host = resource["current_host"]
index = resource["hosts"].index(host) + 1
names = sorted(os.listdir(args.input)) if os.path.isdir(args.input) else []
print(f"{host}: {len(names)} file(s): {names}", flush=True)
if args.message:
    os.makedirs(os.path.join(base, "output"), exist_ok=True)
    with open(os.path.join(base, "output", "message"), "w") as f:
        f.write(f"{args.message} from algo-{index};")
if args.fail_on_host == index:
    time.sleep(0.5)
    print("ValueError: this host was told to fail", file=sys.stderr, flush=True)
    sys.exit(3)
if args.sleep:
    time.sleep(args.sleep)
os.makedirs(args.output, exist_ok=True)
for name in names:
    with open(os.path.join(args.input, name)) as src, open(os.path.join(args.output, name + ".out"), "w") as dst:
        dst.write(src.read().upper())
with open(os.path.join(args.output, f"host-{index}.json"), "w") as f:
    json.dump({"host": host, "hosts": resource["hosts"], "files": names,
               "instance_count": job["ProcessingResources"]["ClusterConfig"]["InstanceCount"]}, f)
