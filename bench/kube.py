#!/usr/bin/env python3
"""The Kubernetes API's costs, driven as client-go drives it (plain HTTP on loopback).

  kube.py objects API TOKEN N     make Deployments up to N (0 replicas), then time GET,
                                  PATCH and a watch's event after a PATCH; prints
                                  "get_p50 get_p99 patch_p50 patch_p99 watch_p50 watch_p99" in ms
  kube.py watchers TOKEN APP N API_1 [API_2 ...]
                                  N watchers of APP's pods on API_1, one on every node's API
                                  (nodes named n1, n2, ... in that order); prints "ready",
                                  then, on stdin EOF, the delay from a pod's change showing on
                                  its own node to each watcher on API_1:
                                  "events p50 p99 max unmatched" in ms

Every load is bounded: a fixed number of requests, on a few connections.
"""
import http.client
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"


def conn(api):
    host, port = api.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=60)


def call(c, token, method, path, body=None, ctype="application/json"):
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = ctype
        body = json.dumps(body)
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
    return json.loads(data) if data else None


def deployment(name):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "hello:latest"}]},
            },
        },
    }


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(p * len(values) + 0.4999)) - 1))]


def objects(api, token, n):
    c = conn(api)
    have = len(call(c, token, "GET", DEPLOYMENTS)["items"])
    names = [f"obj-{i:05d}" for i in range(have, n)]

    def make(chunk):
        c = conn(api)
        for name in chunk:
            call(c, token, "POST", DEPLOYMENTS, deployment(name))

    chunks = [names[i::8] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, chunks))
    # Let the node take in what was made before timing.
    time.sleep(5)
    target = "obj-00003"
    gets, patches, watches = [], [], []
    for _ in range(300):
        t = time.perf_counter()
        call(c, token, "GET", f"{DEPLOYMENTS}/{target}")
        gets.append((time.perf_counter() - t) * 1000)
    for i in range(100):
        t = time.perf_counter()
        call(
            c, token, "PATCH", f"{DEPLOYMENTS}/{target}",
            {"metadata": {"annotations": {"bench": f"p{i}"}}},
            "application/merge-patch+json",
        )
        patches.append((time.perf_counter() - t) * 1000)
    w = conn(api)
    for i in range(50):
        rv = call(c, token, "GET", f"{DEPLOYMENTS}/{target}")["metadata"]["resourceVersion"]
        w.request(
            "GET",
            f"{DEPLOYMENTS}?watch=true&fieldSelector=metadata.name%3D{target}"
            f"&resourceVersion={rv}&timeoutSeconds=30",
            headers={"Authorization": f"Bearer {token}"},
        )
        t = time.perf_counter()
        call(
            c, token, "PATCH", f"{DEPLOYMENTS}/{target}",
            {"metadata": {"annotations": {"bench": f"w{i}"}}},
            "application/merge-patch+json",
        )
        r = w.getresponse()
        while True:
            line = r.readline()
            if not line:
                raise RuntimeError("watch ended before its event")
            if not line.strip():
                continue
            e = json.loads(line)
            if e["object"]["metadata"].get("annotations", {}).get("bench") == f"w{i}":
                watches.append((time.perf_counter() - t) * 1000)
                break
        w.close()
        w = conn(api)
    out = []
    for xs in (gets, patches, watches):
        out += [statistics.median(xs), pct(xs, 0.99)]
    print(" ".join(f"{x:.2f}" for x in out))


def watchers(token, app, n, apis):
    seen = {}  # (pod, state) -> first time on the pod's own node
    arrivals = []  # (key, t) of the watchers on apis[0]
    lock = threading.Lock()
    ready = threading.Barrier(n + len(apis) + 1)
    stop = threading.Event()

    def state(o):
        s = o["status"]
        cs = s.get("containerStatuses") or [{}]
        return (
            o["metadata"]["name"],
            s.get("phase"),
            bool(cs[0].get("ready")),
            o["metadata"].get("deletionTimestamp") is not None,
        )

    def watch(api, reference):
        c = conn(api)
        c.request(
            "GET",
            f"/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3D{app}"
            "&timeoutSeconds=600",
            headers={"Authorization": f"Bearer {token}"},
        )
        r = c.getresponse()
        ready.wait()
        while not stop.is_set():
            line = r.readline()
            if not line:
                return
            if not line.strip():
                continue
            t = time.perf_counter()
            e = json.loads(line)
            o = e["object"]
            key = state(o) + (e["type"],)
            node = o["spec"].get("nodeName")
            with lock:
                if reference == node:
                    seen.setdefault(key, t)
                elif reference is None:
                    arrivals.append((key, t))

    # The nodes' names are n1, n2, ... in the order of their APIs.
    threads = []
    for i, api in enumerate(apis):
        t = threading.Thread(target=watch, args=(api, f"n{i + 1}"), daemon=True)
        t.start()
        threads.append(t)
    for _ in range(n):
        t = threading.Thread(target=watch, args=(apis[0], None), daemon=True)
        t.start()
        threads.append(t)
    ready.wait()
    print("ready", flush=True)
    sys.stdin.read()
    time.sleep(1)
    stop.set()
    with lock:
        delays = [
            (t - seen[key]) * 1000 for key, t in arrivals if key in seen
        ]
        missing = sum(1 for key, _ in arrivals if key not in seen)
    if not delays:
        print("0 0 0 0")
        return
    print(
        f"{len(delays)} {statistics.median(delays):.1f} {pct(delays, 0.99):.1f} {max(delays):.1f}"
        f" {missing}"
    )


if __name__ == "__main__":
    if sys.argv[1] == "objects":
        objects(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "watchers":
        watchers(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
    else:
        sys.exit(__doc__)
