"""Probe: eager (no graph) time and host time per call of bifurcated_decode, the default path (overlap where
preferred) against the states path (LEANATTN_BIFURCATED_CONFIG path field 3), three rounds per case. Host time:
200 calls enqueued behind a 50 ms sleep kernel, so the GPU never holds the host back. Section 15 of the notes.
GPU: python benchmarks/probe_overlap_eager.py (writes $OUT/eager_probe.json)"""
import os, sys, time, json, torch, triton
sys.path.insert(0, "src"); sys.path.insert(0, "benchmarks")
import leanattn
from profile_bifurcated import parse_case
from bench_bifurcated import make_inputs
from leanattn.ops import bifurcated as opb
rows = []
for name in ("gqa 8k x64", "mha 8k x16", "gqa 8k x256", "gqa 8k x32"):
    c = parse_case(name)
    torch.manual_seed(0)
    inp = make_inputs(c, "cuda", copies=False)
    args = tuple(inp[x] for x in ("q", "pk", "pv", "k", "v", "lens"))
    for cfg in ("", "0,0,0,0,0,0,0,0,0,3", ""):
        if cfg:
            os.environ["LEANATTN_BIFURCATED_CONFIG"] = cfg
        else:
            os.environ.pop("LEANATTN_BIFURCATED_CONFIG", None)
        fn = lambda: leanattn.bifurcated_decode(*args)
        for _ in range(5):
            fn()
        path = next(reversed(opb._PLANS.values())).path
        torch.cuda.synchronize()
        eager = triton.testing.do_bench(fn, warmup=25, rep=200) * 1e3
        # host time: enqueue 200 calls behind a long kernel so the GPU never stalls the host
        torch.cuda._sleep(int(2e9 * 0.05))
        t = time.perf_counter()
        for _ in range(200):
            fn()
        host = (time.perf_counter() - t) / 200 * 1e6
        torch.cuda.synchronize()
        r = dict(case=name, path=path, eager_us=eager, host_us=host)
        print(json.dumps(r), flush=True)
        rows.append(r)
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "eager_probe.json"), "w"), indent=1)
