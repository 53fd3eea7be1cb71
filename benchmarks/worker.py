"""A benchmark worker process: builds one framework's systems and times them on request.

    python benchmarks/worker.py jax|torch|keras

Requests arrive as JSON lines on stdin; replies go as JSON lines to the original stdout,
while anything the libraries print is sent to stderr. Timing happens here, in the worker,
so the pipe to the coordinator is never inside a measurement.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import WORKLOADS  # noqa: E402


def _factory(framework):
    if framework == "jax":
        from systems import jax_systems
        return jax_systems
    from systems_ext import keras_systems, torch_systems
    return {"torch": torch_systems, "keras": keras_systems}[framework]


def _versions(framework) -> dict:
    out = {"python": platform.python_version()}
    if framework == "jax":
        import batchfit
        import flax
        import jax
        import optax
        out.update(jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
                   batchfit=batchfit.__version__, jax_devices=str(jax.devices()))
    elif framework == "torch":
        import torch
        out.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    else:
        import keras
        import tensorflow as tf
        out.update(keras=keras.__version__, tensorflow=tf.__version__, keras_backend=keras.backend.backend())
    return out


class Worker:
    def __init__(self, framework):
        self.framework, self.systems = framework, {}

    def handle(self, req: dict) -> dict:
        cmd = req["cmd"]
        if cmd == "info":
            return _versions(self.framework)
        if cmd == "setup":
            start = time.perf_counter()
            w = WORKLOADS[req["workload"]]
            built = _factory(self.framework)(w, req["quick"], req["wanted"])
            self.systems = {s.key: s for s in built}
            return {"setup_s": time.perf_counter() - start,
                    "systems": [dict(key=s.key, kind=s.kind, steps=s.steps, shuffle=s.shuffle, note=s.note)
                                for s in built]}
        if cmd == "run":
            return {"seconds": self.systems[req["key"]].run(req["m"])}
        if cmd == "teardown":
            self.systems = {}
            import gc
            gc.collect()
            return {}
        if cmd == "floor_check":
            from systems import floor_check
            return floor_check(WORKLOADS[req["workload"]], req["quick"])
        if cmd == "permutation_costs":
            from systems import permutation_costs
            return {str(n): permutation_costs(n, req["repeats"]) for n in req["sizes"]}
        if cmd == "input_throughput":
            from input import generator_against_arrays
            return generator_against_arrays(req["repeats"])
        if cmd == "profile":
            from profiling import profile
            return profile(WORKLOADS[req["workload"]], req["quick"], req["what"], req["calls"], req["top"])
        raise ValueError(f"unknown command {cmd!r}")


def main():
    framework = sys.argv[1]
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                       # library prints go to stderr, never into the protocol
    sys.stdout = sys.stderr
    if framework == "jax":              # JAX's one-time backend start-up is nobody's first call
        import jax.numpy as jnp
        (jnp.ones(4) + 1).block_until_ready()
    worker = Worker(framework)
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "exit":
            break
        try:
            reply = {"ok": True, **worker.handle(req)}
        except Exception:  # noqa: BLE001 - reported to the coordinator, which decides
            reply = {"ok": False, "error": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
