"""Probe, not part of the library (section 15 of benchmarks/results/bifurcated_H200_notes.md): the Gluon prefix
pass (kernels/bifurcated_prefix_gluon.py, through probe_gluon_prefix.prefix_states) at one or two programs per
SM, run after or concurrently with the own tokens (leanattn.decode, lean or split schedule, with lse) on two
streams forked in one graph. Prints us per variant, checks each against the op through merge_states, writes
$OUT/overlap_probe.json. GPU: PYTHONPATH=src python benchmarks/probe_overlap.py [case,...]

The run of section 15 (raw bifurcated_probe_overlap_H200.json) used the probe's earlier kernel copy and also timed
programmatic dependent launch (the prefix triggering its dependents at entry): ``git show 6d9c969:benchmarks/
probe_overlap.py``. The library kernel has no trigger, so that variant is gone from this version."""
import os, sys, json, time, torch, triton
sys.path.insert(0, "src"); sys.path.insert(0, "benchmarks")
import leanattn
from profile_bifurcated import parse_case, call_ours
from bench_bifurcated import make_inputs
from common import time_graph
from probe_gluon_prefix import prefix_states

CASES = [("gqa 8k x64", 4), ("gqa 8k x32", 8), ("gqa 8k x16", 16), ("mha 8k x64", 4), ("gqa 32k x64", 4),
         ("gqa 16k x256", 1), ("mha 8k x16", 16)]
sel = sys.argv[1].split(",") if len(sys.argv) > 1 else None
side = torch.cuda.Stream()
rows = []
t_start = time.time()
for name, S1 in CASES:
    if sel and name not in sel:
        continue
    c = parse_case(name)
    torch.manual_seed(0)
    inp = make_inputs(c, "cuda", copies=False)
    q, pk, pv, k, v, lens = (inp[x] for x in ("q", "pk", "pv", "k", "v", "lens"))
    rec = dict(case=name, S1=S1)
    ref = call_ours(inp, "").float()
    rec["states_whole"] = time_graph(lambda: call_ours(inp, ""))
    hold = {}

    def own_fn(sched):
        def f():
            hold["o"], hold["l"] = leanattn.decode(q, k, v, lens, return_lse=True, schedule=sched)
        return f
    owns = {s: own_fn(s) for s in ("lean", "split")}
    for s, f in owns.items():
        rec[f"own_{s}"] = time_graph(f)
    pres = {}
    for S in (S1, 2 * S1):
        if c["prefix"] % (S * 64):
            continue
        launch, states = prefix_states(q, pk, pv, S)
        launch()
        pres[S] = (launch, states)
        rec[f"prefix_S{S}"] = time_graph(launch)

    def conc(pre, own):
        def f():
            cur = torch.cuda.current_stream()
            side.wait_stream(cur)
            pre()
            with torch.cuda.stream(side):
                own()
            cur.wait_stream(side)
        return f

    def check(tag, fn, states):
        fn()
        torch.cuda.synchronize()
        o, l = states()
        oo = torch.cat([o, hold["o"].float().unsqueeze(0)], 0)
        ll = torch.cat([l, hold["l"].unsqueeze(0)], 0)
        out, _ = leanattn.merge_states(oo, ll)
        rec[f"err_{tag}"] = ((out.float() - ref).norm() / ref.norm()).item()

    for S, (launch, states) in pres.items():
        for s, own in owns.items():
            tag = f"S{S}_{s}"
            rec[f"serial_{tag}"] = time_graph(lambda: (launch(), own()))
            rec[f"conc_{tag}"] = time_graph(conc(launch, own))
            check(tag, conc(launch, own), states)
    # merge of S1 + 1 states (what a real op adds)
    o, l = pres[S1][1]()
    mo = torch.cat([o, o[:1]], 0).contiguous()
    ml = torch.cat([l, l[:1]], 0).contiguous()
    rec["merge_S1p1"] = time_graph(lambda: leanattn.merge_states(mo, ml))
    print(json.dumps({k2: (round(v2, 2) if isinstance(v2, float) and v2 > 1e-2 else v2) for k2, v2 in rec.items()}),
          flush=True)
    rows.append(rec)
    del inp, q, pk, pv, k, v
    torch.cuda.empty_cache()
json.dump(dict(rows=rows, device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
               wall_s=time.time() - t_start),
          open(os.path.join(os.environ.get("OUT", "/tmp"), "overlap_probe.json"), "w"), indent=1)
