#!/usr/bin/env bash
# One device call: environment, then the steps named, in order; results go to $OUT.
# Usage (repo root, on the GPU machine): benchmarks/gpu_check.sh STEP...
#   tests       GPU tests of decode and bifurcated (sanitizer tests excluded: see 'sanitize')
#   tests-bif   the bifurcated GPU tests alone (more than 290 s on an H200 since 2026-12-03: about half ran by then)
#   tests-bif-0, tests-bif-1  each half of them (interleaved: LEANATTN_TEST_SHARD in tests/conftest.py; 77 passed in
#               213 s for half 0 on an H200, 2026-12-04; on an H100 2026-12-07 10:3x 77 passed in 279 s and 77 in
#               207 s: give each 300 s)
#   tests-decode  the decode GPU tests alone, float8 caches, soft caps, out=/lse= buffers and k=/v= appends included
#               (179 passed in 228 s on an H200, 2026-12-04, before the buffers and appends)
#   tests-fp8   the GPU tests of decode over float8 caches alone (~65-100 s)
#   tests-combinations-0 .. -3  a quarter each of the random combinations of decode's, bifurcated_decode's and
#               cascade_decode's options against the float64 reference, and of mla_decode's and the sparse ops'
#               (tests/test_combinations.py, 104 cases; LEANATTN_TEST_SHARD i/4, the sparse autotuners launching each
#               config once). Whole, the file ran past 560 s on an H100 (2026-12-08 01:4x) with nothing reported:
#               each random case compiles its own kernels; each quarter stops at 280 s and prints its slowest tests
#   sanitize-fp8  memcheck then racecheck over decode's launches over float8 caches, soft-capped ones too
#               (sanitize.py fp8; 0 errors, 0 hazards on an H200, 2026-12-04; the racecheck alone ~110 s)
#   fp8-diag    float8 conversions and decode over e4m3 and e5m2 caches of equal shapes, each load path
#               (benchmarks/diag_fp8_convert.py; 2026-12-03 it found the plan key lacking the cache's dtype)
#   fp8-tiles   float8 caches under the default launch config against other tiles, paged caches included
#               (probe_decode_fp8_tiles.py, decode probe 50; runs 2026-12-03 21:5x-22:2x: 128-token tiles 11-22% ahead
#               on D=128 contiguous and paged16, now ops/decode_config._CUDA_FP8_TABLE; ~100 s)
#   sanitize-append  memcheck then racecheck over the KV append launch (sanitize.py append)
#   tests-append  the GPU runs of the append, rotary (decode and shared-prefix) and cache_batch_idx tests
#   append      eager decode steps with a KV append and rotary: the one launch against PyTorch ops
#               (benchmarks/probe_decode_append.py)
#   sanitize-leftpad  memcheck then racecheck over cache_leftpad's and batch_invariant's launches
#               (sanitize.py leftpad-invariant; H200 2026-12-07, the kernels' LEFTPAD: 0 errors, 0 hazards)
#   tests-invariant  the GPU runs of the schedule="batch_invariant" tests (tests/test_decode_batch_invariant.py)
#   batch-invariant  schedule="batch_invariant" against "lean" and "split", and its bits alone and in the batch,
#               with 1024- and 4096-key splits beside the library's 2048 (benchmarks/probe_decode_batch_invariant.py;
#               H100 2026-12-07 21:1x, five cases: 4096 won all five; at 22:3x with one GQA sequence and
#               ragged-uniform added, 4096 took 1.20x lean's time on the sequence and 1.08x at MHA 64k: 2048 stays)
#   tests-leftpad  the GPU runs of the cache_leftpad and cache_batch_idx tests alone
#   batch-idx   decode through cache_batch_idx (identity, reversed) and cache_leftpad against the contiguous cache read
#               directly
#               (benchmarks/probe_decode_batch_idx.py)
#   softcap     decode with softcap=50 against none on bf16 and float8 caches, cuDNN beside them
#               (benchmarks/probe_decode_softcap.py, decode probe 51; 2026-12-04: 0.1-1.3% on bf16, 9-13% on float8)
#   tests-bif-softcap  the GPU tests of bifurcated and cascade decode with soft caps alone (26 tests, the Gluon
#               prefix's forms included, all passed on an H200 2026-12-04 10:38 in under 110 s)
#   sanitize-bif-softcap  memcheck then racecheck over bifurcated and cascade launches with a soft cap
#               (sanitize.py bifurcated-softcap; 0 errors, 0 hazards on an H200, 2026-12-04 10:25)
#   sanitize-overlap-softcap  memcheck, then racecheck, over the overlap path's launches with a soft cap (sanitize.py
#               overlap-softcap; H200 2026-12-04: 0 errors, 16 hazards, the uncapped launches' count; the
#               warp-specialized launches among them show Triton's partition-dispatch hazards,
#               see racecheck-ws-minimal)
#   tests-bif-fp8  the GPU tests of bifurcated and cascade decode over float8 caches alone, the Gluon prefix over
#               float8 tiles among them
#   sanitize-bif-fp8  memcheck then racecheck over bifurcated and cascade launches over float8 caches
#               (sanitize.py bifurcated-fp8; H200 2026-12-04: 0 errors, 0 hazards)
#   sanitize-overlap-fp8  memcheck then racecheck over the overlap path's launches over float8 caches (sanitize.py
#               overlap-fp8; H200 2026-12-04: 0 errors, 0 hazards)
#   tests-transformers  the transformers plug-in's tests on the GPU (tests/test_integration_transformers.py; H200,
#               transformers 5.17, 2026-12-04 at 1651c90: 12 passed, 2 failed, the static-cache cases, whose
#               compiled generate reported 2 tensors in its cudagraph pool not tracked as outputs: the plug-in's
#               memoised lengths and the test's record of them, both now kept outside the pools; at 13262a7: 14 passed)
#   tests-window  the GPU tests of decode with a sliding window (tests/test_decode_window_gpu.py)
#   sanitize-window  memcheck then racecheck over decode's launches with a sliding window, paged ones with the
#               pages before each window freed (sanitize.py window)
#   window      sliding-window decode against the window copied, full attention, SDPA and flex
#               (benchmarks/bench_decode_window.py)
#   tests-tokens  the GPU tests of decode with several query tokens a sequence (tests/test_decode_tokens_gpu.py)
#   tests-generate  leanattn.generate on the GPU (tests/test_generate.py): one-token, windowed and speculative loops, CUDA graphs
#   sanitize-tokens  memcheck over decode's launches with several query tokens a sequence (sanitize.py tokens)
#   tests-varlen  the GPU tests of decode over a packed query (cu_seqlens_q; tests/test_decode_varlen_gpu.py)
#   sanitize-varlen  memcheck over decode's launches with a packed query (sanitize.py varlen)
#   varlen      decode over a packed query against the padded query and the peers (benchmarks/bench_decode_varlen.py)
#   tests-bif-tokens  the GPU tests of bifurcated/cascade decode with several query tokens a sample
#               (tests/test_bifurcated_tokens_gpu.py)
#   bif-tokens  bifurcated decode of several query tokens a sample against the one-token call, decode over copied
#               caches and SDPA (benchmarks/bench_bifurcated_tokens.py)
#   tests-bif-paged  the GPU tests of shared prefixes in a page pool (tests/test_bifurcated_paged_gpu.py)
#   bif-paged   a paged shared prefix against the dense one and decode over prefix + own pages
#               (benchmarks/probe_bifurcated_paged.py)
#   bif-paged-window  the same under a 4096-key window (probe_bifurcated_paged.py --window 4096)
#   states-few  the states path at few samples a prompt under launch settings, the prefix alone and a plain read
#               (benchmarks/probe_states_few.py, compiled first in 12 processes)
#   launch-audit  the GPU launches of one call of each public op and path (benchmarks/launch_audit.py)
#   ncu-states-few  Nsight Compute on the states kernel of 4 GQA prompts x4 and of one MHA prompt x4 (same bytes;
#               speed of light, memory, warp states, occupancy)
#   fp8-asm     the float8 decode and MLA GPU tests with every float8 tile converted by inline PTX, then
#               bench_decode_fp8.py on five cases and probe_mla.py's bf16 and float8 defaults with Triton's conversion
#               and with the inline one (LEANATTN_FP8_ASM=0/1, kernels/attend.from_byte), alternately, a process each
#               (H100 2026-12-07 18:4x: 76 passed; MLA 0.93-0.98x the time, plain decode 1.00-1.04x: MLA's default)
#   fp8-convert-once  fp8-asm's runs for float8 tiles converted before their layout changes (V, and MLA's latent
#               tile once for both products; LEANATTN_FP8_CONVERT_ONCE=1, kernels/attend.converted_once) against the
#               default, alternately, a process each; the float8 decode and MLA GPU tests under it first; MLA's
#               32-token tiles too (the tile converted once is held in fp16 registers before its layout change)
#               (H100 2026-12-07 21:1x: 76 passed; MLA 16 heads 0.78-0.91x the time, 128 heads 1.29x; plain decode
#               0.90x paged16, 0.96-0.99x GQA and D=256, 1.03x one MHA 64k sequence: the default for MLA at 16 rows)
#   fp8-grouped-once  float8 decode with its GQA tiles converted once (the default since kernels/attend's GROUPED)
#               against none converted (LEANATTN_FP8_CONVERT_ONCE=0), alternately, a process each: bench_decode_fp8's
#               five cases and probe_bifurcated_fp8 on two (its own-token programs change; one MHA case is the control)
#               (H100 2026-12-07 22:1x: GQA 0.90-0.99x the time, the MHA control 1.001x, bifurcated 0.985-0.994x)
#   mla-fp8-tiles  MLA over a float8 latent cache under other tiles, the bf16 cache beside it (probe_mla.py --variants)
#   fp8-quick   three of bench_decode_fp8.py's cases: float8, int8 and bf16 decode, the peers beside them (~45 s, H100
#               2026-12-07)
#   tests-sparse  the sparse GPU tests other than GQA's (tests/test_sparse_gpu.py -k "not gqa"; tests-sparse-gqa has
#               those, 460-504 s on an H100 2026-12-07; tests-sparse itself 269 s: run them in separate calls)
#   tests-split-sum  the sparse backward's cut groups, summed in the dK/dV launch by each key block's last run,
#               16 query heads over one kv head, 4 and 16 runs: the reference, the group left whole, the same bits
#   sparse-split  the sparse backward under every dK/dV split a case allows, the rule's and K/V repeated beside them
#               (benchmarks/probe_sparse_dkdv_split.py; H100 2026-12-07 10:5x: _DKDV_WAVES 2 -> 6 from it, ~120 s;
#               13:2x with the sum in the launch beside the sum after it, 305 s: the sum in the launch and
#               _DKDV_WAVES 4 from it; with one sum again 240 s at 16:2x)
#   sparse-bwd-configs  the sparse backward under each autotuned config forced and under the autotuner's picks,
#               grouped and over K/V repeated, on sparse-split's cases (benchmarks/probe_sparse_bwd_configs.py: why
#               GQA 32/4 4k took one of two times, 1.5x apart, across three runs; untimed, ~200 s expected)
#   sparse-ab   the sparse kernels' default tiles at D=128 under src and under .carry/ab_src (a copy of the package
#               with a change to compare, carried), in alternating processes a1 b1 a2 b2 (probe_sparse_tiles.py
#               --variants default, its three cases; src_ab)
#   bif-ab      bifurcated_decode on five overlap-path suite cases under src and under .carry/ab_src, alternately
#               (bench_bifurcated.py --sweep, the default launch twice a process; src_ab)
#   sparse-tiles  the sparse kernels' tiles at D=128 (LEANATTN_SPARSE_TILES) forward and backward, cuDNN's dense
#               causal beside them (benchmarks/probe_sparse_tiles.py; H100 2026-12-07 10:4x: the D=128 defaults from
#               it, dense 1.15x faster, 1.36x cuDNN's time; ~130 s)
#   tests-bif-window  the GPU tests of bifurcated/cascade decode with a sliding window
#               (tests/test_bifurcated_window_gpu.py)
#   bif-window  bifurcated decode with a sliding window against no window, windowed decode over copies and SDPA
#               (benchmarks/bench_bifurcated_window.py)
#   sanitize-bif-paged  memcheck over bifurcated/cascade launches over prefixes in a page pool (sanitize.py
#               bifurcated-paged)
#   sanitize-bif-window  memcheck over bifurcated/cascade launches with a 300-key window (sanitize.py bifurcated-window)
#   sanitize-bif-window-edges  the same with windows of 0 and 2000 keys (sanitize.py bifurcated-window-edges)
#   bif-window-parts  a windowed shared-prefix call and each of its parts, side by side (probe_bifurcated_window_parts.py)
#   tests-sinks  the GPU tests of attention sinks (tests/test_sinks_gpu.py)
#   merge       merge_states and merge_state against PyTorch's merge, eager and compiled (benchmarks/bench_merge.py)
#   merge-config  merge_list_kernel (merge_state, its in-place form, sinks) at rows and warps a program other than
#               the default's (benchmarks/probe_merge_list_config.py, decode probe 52; ~60 s)
#   bif-sinks   the shared-prefix ops with attention sinks folded into their merge launch, against no sinks and
#               against sinks merged by a launch apart (benchmarks/probe_bifurcated_sinks.py)
#   sinks       decode without sinks, with them in-kernel and merged by a launch apart, at gpt-oss-20b's attention
#               shape (probe_decode_sinks.py)
#   tests-alibi  the GPU tests of ALiBi in decode (tests/test_decode_alibi_gpu.py)
#   tests-mla   the GPU tests of MLA decode (tests/test_mla_gpu.py)
#   sanitize-mla  memcheck over MLA decode's launches (sanitize.py mla)
#   mla         MLA decode against SDPA and flex over the concatenated cache (bench_mla.py)
#   mla-probe   MLA decode variants side by side: values loaded apart, tiles, merge in-kernel, splits (probe_mla.py)
#   ncu-sparse  Nsight Compute on every kernel of one sparse forward + backward with nothing dropped at D=128 and of
#               cuDNN's dense causal SDPA beside it (gqa dense 8k; speed of light, compute, memory, warp states,
#               occupancy; benchmarks/ncu_sparse.py): where the 1.36x of cuDNN's time goes
#   ncu-mla     Nsight Compute on one MLA launch at 2 and at 3 pipeline stages (16 heads B=32 4k; speed of light,
#               memory, warp states, source counters; benchmarks/ncu_mla.py)
#   sanitize-alibi  memcheck over decode's launches with ALiBi slopes (sanitize.py alibi)
#   alibi       decode with and without ALiBi at BLOOM/MPT's attention shape, against flex and SDPA with the bias
#               (probe_decode_alibi.py)
#   verify-step  a speculative verify step against a one-token step, with and without the model's fused_ops:
#               graph replay time, kernels by kind (probe)
#   e2e-fused   bench_e2e.py with Part A also under the model's fused_ops (4k, 32k, 128k; x16 samples)
#   tests-fused  the model's fused elementwise kernels on the GPU (bf16, llama-3-8b sizes; tests/test_fused_ops*.py)
#   speculate   generate(speculate=K) against one-token steps and transformers' prompt lookup (bench_speculate.py)
#   tokens      decode of several query tokens a sequence against one-token decode, per-token calls, SDPA and flex
#               (benchmarks/bench_decode_tokens.py)
#   overlap-fp8  the Gluon prefix's launch shapes over float8 tiles (benchmarks/probe_overlap_fp8.py, bifurcated
#               probe 54)
#   bif-fp8     bifurcated decode over float8 e4m3 caches against bf16 ones, default and states paths
#               (benchmarks/probe_bifurcated_fp8.py, bifurcated probe 53)
#   bif-softcap bifurcated decode with softcap=50 against none, default and states paths
#               (benchmarks/probe_bifurcated_softcap.py, bifurcated probe 52; 4 cases ~100 s)
#   fp8         decode over float8 e4m3 caches against bf16 caches and the SDPA peers (bench_decode_fp8.py; ~80 s;
#               2026-12-03 22:30: 1.26-1.65x our bf16 decode)
#   tests-one-sample  the bifurcated GPU tests of the one-sample (concat) path alone
#   tests-overlap  the overlap path's GPU tests alone
#   tests-all   every GPU test file, sparse and tree (2 GPUs) included
#   tests-tree-sparse  the tree (merges through merge_states; 2-GPU tests skip on one) and sparse GPU tests alone,
#               with the sparse LSE's test of tests/test_sparse.py (its compile test, at two lengths, autotunes
#               the sparse kernels at each: more than 190 s on a cold H100, 2026-12-06 18:1x, so it is not run here)
#   sanitize    compute-sanitizer memcheck over benchmarks/sanitize.py (decode, bifurcated, sparse)
#   tests-sparse-gqa  sparse attention with grouped-query attention: the GPU test and the CPU test file on the GPU
#   sanitize-sparse  memcheck over sanitize.py sparse (MHA and GQA, both backward modes, a cut group)
#   racecheck-sparse  racecheck (shared memory only) over the same launches (a step of its own since 2026-12-07
#               13:1x, when it ran past 250 s beside the memcheck with two ways to sum a cut group; at 22:2x, H100,
#               it ran past its 500 s with no summary; since, sanitize.py sets LEANATTN_SPARSE_TUNE_ONCE=1, so the
#               autotuners launch each config once instead of do_bench's trials; -d64 and -d128 split it further)
#   racecheck-sparse-d64, racecheck-sparse-d128  racecheck over the launches of one head dim (H100 2026-12-07
#               22:4x, each config launched once: 0 hazards each, both in 131 s)
#   racecheck-sparse-split  racecheck over the cut group's launches alone (D 64 and 128, both dQ modes, split 2):
#               the new part of the sparse backward, for a call too short for racecheck-sparse (H100 2026-12-07
#               22:3x: 0 hazards in 133 s)
#   sparse-gqa  sparse attention with GQA against K/V repeated and dense SDPA (bench_sparse_gqa.py)
#   sparse-docs  document masking of packed sequences (document ids as buckets) against flex and SDPA per document
#               (bench_sparse_docs.py)
#   tests-mla-fp8  MLA over float8 latent caches: the GPU test (test_mla_fp8.py builds CPU tensors: CPU only)
#   tests-int8  decode over int8 caches (tests/test_decode_int8.py, its GPU test included)
#   tests-flashinfer  FlashInfer's paged-decode wrappers (integrations/flashinfer.py), a captured run included, and
#               flash-attn's flash_attn_with_kvcache (integrations/flash_attn.py)
#   mla-topk    DeepSeek-V3.2's top-k sparse MLA as pages of one token, against as many tokens read in order
#               (benchmarks/probe_mla_topk.py)
#   sanitize-db memcheck over the decode and bifurcated launches only (~190-230 s on an H200 until 2026-12-02; on
#               2026-12-03 cut by a 300 s timeout before it finished)
#   sanitize-decode  memcheck over the decode launches alone (both schedules, the piece merge in-kernel and apart)
#   sanitize-merge  memcheck over every form of the merge launch and the launches that take it (sanitize.py merge;
#               0 errors on an H200, 2026-12-03 11:3x, ~40 s; on an H100 2026-12-06 04:4x, 33 s)
#   racecheck-merge  racecheck over the same launches (shared-memory hazards of the merge's cross-warp folds;
#               0 hazards on an H200, 2026-12-03 11:4x; on an H100 2026-12-06 04:4x, 19 s)
#   sanitize-bif  memcheck over the bifurcated launches only
#   sanitize-concat  memcheck then racecheck over the one-sample launches alone (sanitize.py concat)
#   racecheck   compute-sanitizer racecheck over the decode launches (shared-memory hazards; 147 s on an H200)
#   racecheck-bif  the same over the bifurcated launches (220 s on an H200)
#   sanitize-overlap  memcheck then racecheck over the overlap path's launches alone (sanitize.py overlap)
#   decode      the decode suite (bench_decode.py), peers in the same run, both flushes (110-135 s of suite,
#               125-157 s with start-up, on an H200)
#   bifurcated  the bifurcated 8k cases (bench_bifurcated.py --cases 8k)
#   bifurcated-all  the 36-case bifurcated suite (8k, 16k, 32k; 142 s of suite with both flushes on an H200, before
#               the one-sample re-timings over three placements, about 25 s more; peers past --budget-s 260 are skipped)
#   bif-prefix-rows  the overlap path's Gluon prefix at 128 rows a program (two warp groups sharing one K/V ring,
#               2-4 stages, one per SM) against the default, on the path's cases and some the states path takes.
#               Run 2026-12-02 19:5x (raw bifurcated_sweep_NVIDIA_H200_prefix_rows.json; notes section 24)
#   prefix-rows the same, interleaved over five rounds, on those cases and prefixes between the suite's
#               (benchmarks/probe_prefix_rows.py, probe 37; ~30 s). Runs 2026-12-02 19:58 and 20:0x: the rule of
#               ops/bifurcated_overlap.prefix_rows, 0.884-0.979 of 64 rows where it takes 128
#   ws-prefix   the warp-specialized Gluon prefix (prefix_gluon_ws_kernel: a loading warp, two consumer warp groups
#               as partitions) against the plain one at 64 and 128 rows, prefix states only, prefix-bound GQA cases
#               (probe_ws_prefix.py, probe 38; run 2026-12-03 03:2x: 0.89-0.99 of 64-row programs; ~35 s)
#   ws-stress   each variant of probe 38 launched 20 times eagerly and replayed 20 times from a graph, checked after each,
#               each case in its own process (probe 38's timing run met an illegal address on 2026-12-03; ~60 s)
#   racecheck-ws  racecheck over the warp-specialized prefix's launches alone, then over all overlap launches, the
#               hazards written to $OUT (the overlap launches showed 16 hazards on 2026-12-03 once ws was among them)
#   pingpong    probe 38 with the ping-pong variants (the warp-specialized prefix's consumers taking turns issuing their
#               products, ops/bifurcated_overlap.WS_PINGPONG; compiled offline only so far), then its GPU tests and
#               memcheck over its launches (each cut by a timeout, in case it hangs; ~150 s)
#   racecheck-ws-minimal  racecheck over a Gluon kernel whose warp-specialized partitions touch no shared memory of
#               their own (benchmarks/racecheck_ws_minimal.py): hazards there are Triton's partition dispatch
#   bif-ws      the overlap path with the warp-specialized prefix (num_warps field 12) against the default, on the
#               path's suite cases (a launch sweep)
#   bif-leads   8k x1 and x32 side by side under the default and the load paths of contiguous caches
#               (LEANATTN_BIFURCATED_CONFIG sixth field: 2 block pointers, 3 TMA)
#   headdim-sweep  launch configs of the suite's D=64 case (the weakest against cuDNN) and D=256 case (70% of
#               the read ceiling; an older H200 sweep had TMA 128-token tiles 5% ahead), cuDNN in the same run.
#               Offline (Triton 3.6, sm_90a): D=64 256-token tiles 206 registers at 4 warps / 128 at 8, 2 per
#               SM; D=256 32-token tiles fit 3 per SM (the table caps 1), 64-token tiles 2 at 4 warps
#               Run 2026-12-01 14:17 (decode probe 9): no config more than 1% (D=64) or 2.5% (D=256) ahead
#   d256-shapes the decode D=256 configs over eight D=256 shapes (benchmarks/probe_decode_d256.py; decode probe 14,
#               2026-12-01 22:2x: 64-token tiles at one per SM 1-9% ahead of 32-token tiles on all eight, ~45 s)
#   read-gap    lean with and without cache_seqlens against split, each difference turned, each cut on the other's
#               grid, a plain read of the bytes beside them, under the read flush (benchmarks/probe_decode_read_gap.py,
#               probe 45; ~55 s; run 2026-12-03 14:40: the search 0.5-1.3 us, split over lean's cut 0.3-1.1 us ahead)
#   grid-search lean with cache_seqlens, its search over the grid it uses against over a grid with idle programs and
#               against no search (benchmarks/probe_decode_grid_search.py, probe 48; with ragged cases)
#   even        lean's cut of equal rows as even pieces on the split kernel (the default since probe 49) against the
#               persistent kernel (LEANATTN_DECODE_EVEN=0), with and without cache_seqlens, uniform suite cases, cuDNN
#               beside them, both flushes (benchmarks/probe_decode_even.py, probe 49)
#   read-gap-cand  the same in three processes: the schedule's search over 256, 32 and 256 candidates
#               (LEANATTN_SCHEDULE_CANDIDATES; 32 fit one warp: no block-wide barriers)
#   decode-short  lean against split on short uniform cases, each over the other's cut (benchmarks/probe_decode_short.py;
#               run 2026-12-02 00:0x, decode probe 15: split over lean's cut 1-6% ahead), and lean with a 16-wide
#               lengths vector (LEANATTN_DECODE_BLOCK_B_MIN=16; run 02:19: 0.3 us behind a 1-wide one at B=1)
#   host        host time of eager calls, whole and in parts (benchmarks/host_overhead.py, decode probe 18; ~20 s)
#   decode-eager  eager against graph timings after each step the suite's process goes through (graph capture,
#               flex compiled, cuDNN run; benchmarks/probe_decode_eager.py, decode probe 19; run 2026-12-02 04:23:
#               50.5-50.7 us eager after every step against 49.2 from a graph, ~40 s)
#   decode-merge  stream-K piece merge in-kernel against a merge launch, over the decode suite and the one-sample
#               bifurcated cases (benchmarks/probe_decode_merge.py)
#   pdl         the merge launch with and without programmatic dependent launch, and the in-kernel merge, on decode
#               suite cases and one-sample bifurcated cases (benchmarks/probe_pdl.py, decode probe 22)
#   order       lean's programs of an aligned cut one row after another against across rows, on decode suite cases
#               and one-sample bifurcated cases (benchmarks/probe_order.py, decode probe 23)
#   ncu-x1      Nsight Compute on one launch each of the one-sample kernel and decode over copied caches (GQA 16k
#               x1; speed of light, memory, warp states, source counters; benchmarks/ncu_one_sample.py; ~60 s)
#   grid-cap    lean's grid sized by occupancy against the aligned cut at full capacity, on one sequence at and
#               below capacity and on ragged batches (benchmarks/probe_grid_at_capacity.py, decode probe 24; ~40 s)
#   ncu-x1-source  the same two launches under Nsight Compute's full set with source import: the report, the
#               per-SASS-instruction source page as CSV and every section's details (stall reasons) under $OUT
#   waves       lean over its default grid against 256-2048 programs (several waves), split over 4-16x rows programs,
#               cuDNN, on six uniform suite cases (benchmarks/probe_waves.py, decode probe 25; ~90 s)
#   ncu-gap     Nsight Compute counters of lean with and without cache_seqlens and split at mha B=1 16k: duration, SM
#               active cycles, instructions, warp stalls (no instruction, long scoreboard, barrier, wait, branch)
#   ncu-balance Nsight Compute metrics of one lean and one cuDNN launch at gqa B=16 8k: SM active cycles (min, mean,
#               max over the SMs) against elapsed cycles, DRAM throughput (benchmarks/ncu_balance.py; ~30 s)
#   one-per-sm  lean at one program per SM (cuDNN's decomposition at gqa B=16 8k: 128 programs, a whole (sequence,
#               kv head) each, no merge; decode probe 25's ncu) over its own grid and over exactly 128 programs,
#               against the default two per SM and cuDNN (benchmarks/probe_one_per_sm.py, decode probe 27; run
#               2026-12-02 10:07: 128-token tiles at 8 warps over exactly 128 programs 0.9-2.3% ahead on four cases,
#               2.3% behind at gqa B=64 4k; ~70 s)
#   decode-d64  lean against split at D=64 outside the tile loop: lean's cut with and without its alignment search,
#               over the full grid, split at lean's cut, and both with every length 0 (benchmarks/probe_decode_d64.py,
#               decode probe 21; run 2026-12-02 06:24, BENCHMARK_RUNS.md decode section; ~30 s)
#   piece-inline  stream-K pieces called (noinline, the default) against inlined, decode suite cases and the
#               one-sample bifurcated cases against decode over copies (benchmarks/probe_piece_inline.py, probe 20;
#               run 04:39: inlined 0.7-2% slower on decode, level on the one-sample path)
#   decode-merge-d64  the same on the D=64 case alone: its merge launch is capped to 4 programs per SM since
#               2026-12-02 (runtime.register_cap; 128 registers offline); run 04:2x: 142.3 us against 141.5 in-kernel (~30 s)
#   bif-prefix-shapes  the split path (a prefix launch shaped apart from the own-token launch: 128-row,
#               8-warp prefix blocks of 64- or 128-token tiles) against the default states path on the GQA
#               cases furthest from the floor (bifurcated notes section 10). Offline (Triton 3.6, sm_90a): 113-230
#               registers, no spills, 1-2 prefix programs per SM. Run 2026-12-01 16:05: 1.5-4x slower than the states
#               path, the split path's own launch dominating (bifurcated notes section 11)
#   decode-load the decode suite's lean schedule under each load path (0 pointers, 1 block pointers,
#               2 TMA) and TMA launch variants, side by side (bench_decode.py --sweep)
#   piece-offsets  the one-sample path's tiles as a scalar base plus offsets fixed for the piece (SAME_STRIDE) against a
#               64-bit address per row, and decode over copies, on the one-sample cases (probe_piece_offsets.py, probe 30)
#   x1-overhead the one-sample path against decode over copies at the case's work, the prefix alone, one tile a row and
#               none, and the kernels of one eager call of each (benchmarks/probe_x1_overhead.py, probe 29; ~60 s)
#   x1-alloc    the one-sample path against decode over copies with the own cache allocated apart, in a 64 MB
#               allocation and adjacent to the prefix, then ours first (benchmarks/probe_x1_alloc.py, probe 31; ~30 s)
#   overlap-own the overlap path's own-token kernel under four launch configs on every suite case the path takes,
#               five interleaved rounds (benchmarks/probe_overlap_own.py, probe 32; ~35 s)
#   overlap-graphs  the overlap path at MHA x256 in four graphs, each timed with a short and a long do_bench window
#               (benchmarks/probe_overlap_graphs.py, probe 33; ~30 s)
#   x1-context  the one-sample pair timed alternately after each of the suite's steps: just captured, after the
#               suite's timings, after the peers, after the ceilings (benchmarks/probe_x1_context.py, probe 34; ~60 s)
#   overlap-ordered  the overlap path with the own tokens as the prefix's programmatic dependent launch on one
#               stream (ops/bifurcated_overlap.ORDERED) against two streams, every case the path takes, five rounds
#               (benchmarks/probe_overlap_ordered.py, probe 35; run 2026-12-02 15:4x and 16:00: ordered 1.1-2.4%
#               ahead at MHA x16, 0.1-2.4% at GQA x64, level at GQA x256, 0.6-2.5% behind at MHA x256; ~40 s)
#   overlap-pingpong  the overlap path with the warp-specialized prefix's consumers taking turns (WS_PINGPONG) against
#               without, and the default, on the cases the rule gives it and three it is forced on (probe 39; ~60 s)
#   overlap-room  the overlap path on the x256 cases with room for a third own-token program beside the
#               warp-specialized prefix (its ring at 2 stages, or 32-token own tiles) against the default (probe 40; ~40 s)
#   bif-overlap the overlap path (Gluon prefix, own tokens beside it as its dependent launch or on another stream;
#               the default on sm_90) against the Triton states path (LEANATTN_BIFURCATED_CONFIG path field 3),
#               default first and last, on the 8k cases of 4 samples or more and the long GQA cases (--sweep)
#   bif-overlap-rule  the states path against the overlap path with one and with two Gluon prefix programs per SM
#               on every suite case of 16, 32 and 64 samples (the data behind ops/bifurcated_overlap.preferred)
# Each step prints one summary line; a failing step does not stop the others.
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# everything printed also goes to $OUT as it comes: a call cut by its time limit still returns what ran (2026-12-06
# 18:0x, a call piped through tail returned nothing after 600 s)
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader
# Triton's compile cache travels between calls (benchmarks/triton_cache.py): a call whose `carry` names .carry
# starts from .carry/triton_cache.tar.xz, and every step leaves the cache in $OUT/triton_cache.tar.xz; copy it
# from the reply's files_at to .carry/ (ignored by git) before the next call
export TRITON_CACHE_DIR=/tmp/triton_cache
python3 benchmarks/triton_cache.py unpack .carry/triton_cache.tar.xz "$TRITON_CACHE_DIR"
rm -rf /tmp/junit  # a warm machine keeps the last call's

# fp8_ab KNOB NAME MLA_VARIANTS: the float8 decode and MLA GPU tests under KNOB=1, then bench_decode_fp8.py on five
# cases and probe_mla.py's MLA_VARIANTS under KNOB=0 and 1, alternately (0-1-0-1), a process each (the knobs are read
# when kernels/attend.py is imported); the four runs' results come back as $OUT/NAME.tar.gz, one file, since a call
# returns at most 8
fp8_ab() {
  local knob=$1 name=$2 variants=$3 run
  env "$knob=1" "${PYTEST[@]}" tests/test_decode_fp8_gpu.py tests/test_mla_gpu.py 2>&1 | tail -3
  for run in 0a 1a 0b 1b; do
    echo "$knob=${run:0:1} (${run})"
    env "$knob=${run:0:1}" timeout 150 python3 benchmarks/bench_decode_fp8.py --out "/tmp/$name/$run" \
      --cases "mha B=1 64k,gqa B=4 32k,gqa B=64 4k,paged16 gqa B=4 32k,d256 16/8 B=1 32k" 2>&1 | grep -vi warn \
      | tail -8
    env "$knob=${run:0:1}" timeout 120 python3 benchmarks/probe_mla.py --variants "$variants" \
      --out "/tmp/$name/$run" 2>&1 | grep -E "floor|Error|failed"
  done
  tar -czf "$OUT/$name.tar.gz" -C /tmp "$name"
}
# src_ab NAME PATTERN CMD...: CMD, a benchmark that takes --out, under src and under .carry/ab_src (a copy of the
# package with a change to compare, carried) in alternating processes a1 b1 a2 b2, each writing to $OUT/NAME_RUN;
# prints its lines that match PATTERN
src_ab() {
  local name=$1 pattern=$2 run src
  shift 2
  [ -d .carry/ab_src/leanattn ] || { echo "$name: no .carry/ab_src/leanattn to compare src with"; return; }
  for run in a1 b1 a2 b2; do
    src=src; [ "${run:0:1}" = b ] && src=.carry/ab_src
    echo "$run: PYTHONPATH=$src"
    PYTHONPATH=$src "$@" --out "$OUT/${name}_$run" 2>&1 | grep -E "$pattern"
  done
}
fp8_default_ab() {
  local run
  for run in 0a da 0b db; do
    echo "LEANATTN_FP8_CONVERT_ONCE=${run:0:1} (${run}; d: unset)"
    local knob=(env); [ "${run:0:1}" = 0 ] && knob=(env LEANATTN_FP8_CONVERT_ONCE=0)
    "${knob[@]}" timeout 150 python3 benchmarks/bench_decode_fp8.py --out "/tmp/fp8_grouped_once/$run" \
      --cases "mha B=1 64k,gqa B=4 32k,gqa B=64 4k,paged16 gqa B=4 32k,d256 16/8 B=1 32k" 2>&1 | grep -vi warn \
      | tail -8
    "${knob[@]}" timeout 150 python3 benchmarks/probe_bifurcated_fp8.py --cases "gqa 8k x16,gqa 32k x64" \
      --out "/tmp/fp8_grouped_once/$run" 2>&1 | grep -E "\||Error"
  done
  tar -czf "$OUT/fp8_grouped_once.tar.gz" -C /tmp fp8_grouped_once
}
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
for step in "$@"; do
  echo "== $step"
  # each test's time comes back in $OUT/test_times.txt (a step's summary line alone does not say where 500 s went)
  PYTEST=(python3 -m pytest -q -p no:cacheprovider -p no:logging --junitxml "/tmp/junit/$step.xml")
  case "$step" in
    tests) "${PYTEST[@]}" tests/test_decode_gpu.py tests/test_bifurcated_gpu.py -k "not sanitizer" 2>&1 | tail -3 ;;
    tests-bif) "${PYTEST[@]}" tests/test_bifurcated_gpu.py -k "not sanitizer" 2>&1 | tail -3 ;;
    tests-bif-0|tests-bif-1) LEANATTN_TEST_SHARD=${step#tests-bif-}/2 "${PYTEST[@]}" tests/test_bifurcated_gpu.py \
      -k "not sanitizer" 2>&1 | tail -3 ;;
    tests-decode) "${PYTEST[@]}" tests/test_decode_gpu.py tests/test_decode_fp8_gpu.py tests/test_decode_softcap_gpu.py \
      tests/test_decode_out.py tests/test_decode_append.py tests/test_decode_rotary.py tests/test_decode_batch_idx.py \
      tests/test_bifurcated_rotary.py -k "not sanitizer" 2>&1 | tail -3 ;;
    tests-append) "${PYTEST[@]}" tests/test_decode_append.py tests/test_decode_rotary.py tests/test_bifurcated_rotary.py \
      tests/test_decode_batch_idx.py tests/test_merge.py::test_nan_lse_row tests/test_decode_leftpad.py 2>&1 | tail -3 ;;
    tests-leftpad) "${PYTEST[@]}" tests/test_decode_leftpad.py tests/test_decode_batch_idx.py 2>&1 | tail -3 ;;
    tests-fp8) "${PYTEST[@]}" tests/test_decode_fp8_gpu.py 2>&1 | tail -3 ;;
    tests-combinations-[0-3])
      LEANATTN_TEST_SHARD=${step#tests-combinations-}/4 LEANATTN_SPARSE_TUNE_ONCE=1 timeout 280 "${PYTEST[@]}" \
        --durations=5 tests/test_combinations.py 2>&1 | tail -9 ;;
    tests-bif-softcap) "${PYTEST[@]}" tests/test_bifurcated_softcap_gpu.py 2>&1 | tail -3 ;;
    sanitize-bif-softcap)
      timeout 300 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py bifurcated-softcap 2>&1 | tail -3
      timeout 300 compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py bifurcated-softcap 2>&1 | tail -3 ;;
    tests-bif-fp8) "${PYTEST[@]}" tests/test_bifurcated_fp8_gpu.py 2>&1 | tail -3 ;;
    sanitize-bif-fp8)
      timeout 250 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py bifurcated-fp8 2>&1 | tail -2
      timeout 250 compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py bifurcated-fp8 2>&1 | tail -2 ;;
    sanitize-overlap-fp8)
      timeout 250 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py overlap-fp8 2>&1 | tail -2
      timeout 250 compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py overlap-fp8 2>&1 | tail -2 ;;
    tests-window) "${PYTEST[@]}" tests/test_decode_window_gpu.py 2>&1 | tail -3 ;;
    tests-transformers) "${PYTEST[@]}" tests/test_integration_transformers.py 2>&1 | tail -4 ;;
    tests-tokens) "${PYTEST[@]}" tests/test_decode_tokens_gpu.py 2>&1 | tail -3 ;;
    tests-varlen) "${PYTEST[@]}" tests/test_decode_varlen_gpu.py 2>&1 | tail -3 ;;
    tests-bif-tokens) "${PYTEST[@]}" tests/test_bifurcated_tokens_gpu.py 2>&1 | tail -3 ;;
    bif-tokens) timeout 500 python3 benchmarks/bench_bifurcated_tokens.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    tests-bif-paged) "${PYTEST[@]}" tests/test_bifurcated_paged_gpu.py 2>&1 | tail -3 ;;
    bif-paged) timeout 500 python3 benchmarks/probe_bifurcated_paged.py --out "$OUT" 2>&1 | grep -E "floor|wrote|Error|failed" ;;
    bif-paged-window) timeout 400 python3 benchmarks/probe_bifurcated_paged.py --window 4096 --out "$OUT" 2>&1 \
      | grep -E "floor|wrote|Error|failed" ;;
    states-few) timeout 550 python3 benchmarks/probe_states_few.py --precompile 12 --out "$OUT" 2>&1 \
      | grep -E "floor|    |wrote|Error|failed" ;;
    launch-audit) timeout 500 python3 benchmarks/launch_audit.py --out "$OUT" 2>&1 | grep -E "launches|FAILED|wrote|Error" ;;
    ncu-states-few)
      ncu -k "regex:bifurcated_states_kernel" --launch-count 2 --section SpeedOfLight --section MemoryWorkloadAnalysis \
        --section WarpStateStats --section Occupancy --section LaunchStats python3 benchmarks/probe_states_few.py \
        --call-only --cases "gqa 4 prompts x16,mha x4" > "$OUT/ncu_states_few.txt" 2>&1
      grep -E -e "bifurcated_states|Duration|DRAM Throughput|Memory Throughput|Registers Per|Achieved Occupancy" \
        -e "Warp Cycles Per Issued|Grid Size|Stall|L2 Hit|L1/TEX Hit" "$OUT/ncu_states_few.txt" | head -60 ;;
    tests-bif-window) "${PYTEST[@]}" tests/test_bifurcated_window_gpu.py 2>&1 | tail -3 ;;
    bif-window) timeout 500 python3 benchmarks/bench_bifurcated_window.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    bif-window-parts) timeout 400 python3 benchmarks/probe_bifurcated_window_parts.py --out "$OUT" 2>&1 | grep -E "parts|wrote|Error" ;;
    tests-sinks) "${PYTEST[@]}" tests/test_sinks_gpu.py 2>&1 | tail -3 ;;
    merge) timeout 300 python3 benchmarks/bench_merge.py --out "$OUT" 2>&1 | grep -E "us|wrote|Error" ;;
    merge-config) timeout 200 python3 benchmarks/probe_merge_list_config.py --out "$OUT" 2>&1 | grep -E "M=|wrote|Error" ;;
    bif-sinks) timeout 400 python3 benchmarks/probe_bifurcated_sinks.py --out "$OUT" 2>&1 \
        | grep -E "floor|wrote|Error|failed" ;;
    sinks) timeout 300 python3 benchmarks/probe_decode_sinks.py --out "$OUT" 2>&1 | grep -E "us|wrote|Error" ;;
    tests-alibi) "${PYTEST[@]}" tests/test_decode_alibi_gpu.py 2>&1 | tail -3 ;;
    tests-mla) "${PYTEST[@]}" tests/test_mla_gpu.py 2>&1 | tail -3 ;;
    sanitize-mla) timeout 400 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py mla 2>&1 | tail -3 ;;
    mla) timeout 400 python3 benchmarks/bench_mla.py --out "$OUT" 2>&1 | grep -E "us|wrote|Error|failed" ;;
    mla-probe) timeout 400 python3 benchmarks/probe_mla.py --out "$OUT" 2>&1 | grep -E "floor|wrote|Error|failed" ;;
    ncu-sparse)
      timeout 500 ncu --profile-from-start off --section SpeedOfLight --section ComputeWorkloadAnalysis \
        --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
        python3 benchmarks/ncu_sparse.py > "$OUT/ncu_sparse.txt" 2>&1
      grep -E "Context [0-9]|Duration|Compute \(SM\) Throughput|DRAM Throughput|Registers Per|Achieved Occupancy|\
Warp Cycles Per Issued|Issued Ipc|launched|Error" "$OUT/ncu_sparse.txt" | head -120 ;;
    ncu-mla)
      ncu -k "regex:lean_decode_kernel" --launch-skip 4 --launch-count 2 --section SpeedOfLight \
        --section MemoryWorkloadAnalysis --section WarpStateStats --section SourceCounters --section Occupancy \
        --section LaunchStats python3 benchmarks/ncu_mla.py > "$OUT/ncu_mla.txt" 2>&1
      grep -E "lean_decode_kernel|Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Issued Ipc|launched" "$OUT/ncu_mla.txt" | head -40 ;;
    sanitize-alibi) timeout 400 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py alibi 2>&1 | tail -3 ;;
    alibi) timeout 300 python3 benchmarks/probe_decode_alibi.py --out "$OUT" 2>&1 | grep -E "us|wrote|Error|failed" ;;
    sanitize-bif-window)
      timeout 400 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py bifurcated-window 2>&1 | tail -3 ;;
    sanitize-bif-window-edges)
      timeout 400 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py bifurcated-window-edges 2>&1 | tail -3 ;;
    sanitize-bif-paged)
      timeout 400 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py bifurcated-paged 2>&1 | tail -3 ;;
    sanitize-varlen)
      timeout 400 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py varlen 2>&1 | tail -3 ;;
    varlen) timeout 500 python3 benchmarks/bench_decode_varlen.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    tests-generate) "${PYTEST[@]}" tests/test_generate.py 2>&1 | tail -3 ;;
    e2e-fused) timeout 500 python3 benchmarks/bench_e2e.py --fused-ops --contexts 4k,32k,128k --samples 16 --budget-s 200 \
      --out "$OUT" 2>&1 | grep -E "^  A|^  B|wrote|Error" ;;
    tests-fused) "${PYTEST[@]}" tests/test_fused_ops_gpu.py tests/test_fused_ops.py 2>&1 | tail -3 ;;
    sanitize-tokens)
      timeout 400 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py tokens 2>&1 | tail -3 ;;
    tokens) timeout 500 python3 benchmarks/bench_decode_tokens.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    verify-step) timeout 300 python3 benchmarks/probe_verify_step.py --fused-ops --out "$OUT" 2>&1 | grep -E "\||K=|wrote|Error" ;;
    speculate) timeout 540 python3 benchmarks/bench_speculate.py --out "$OUT" 2>&1 | grep -vi warn ;;
    sanitize-window)
      timeout 250 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py window 2>&1 | tail -2
      timeout 250 compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py window 2>&1 | tail -2 ;;
    window) timeout 400 python3 benchmarks/bench_decode_window.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    overlap-fp8) timeout 300 python3 benchmarks/probe_overlap_fp8.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    bif-fp8) timeout 300 python3 benchmarks/probe_bifurcated_fp8.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    sanitize-overlap-softcap)
      timeout 250 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py overlap-softcap 2>&1 | tail -2
      timeout 250 compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py overlap-softcap 2>&1 | tail -2 ;;
    bif-softcap) timeout 300 python3 benchmarks/probe_bifurcated_softcap.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    sanitize-fp8)
      timeout 300 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py fp8 2>&1 | tail -3
      timeout 400 compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py fp8 2>&1 | tail -3 ;;
    fp8-diag) PYTHONPATH=src timeout 120 python3 benchmarks/diag_fp8_convert.py 2>&1 | grep -vi warn ;;
    append) timeout 200 python3 benchmarks/probe_decode_append.py --out "$OUT" 2>&1 | grep -E "B=|wrote|Error" ;;
    batch-invariant) timeout 300 python3 benchmarks/probe_decode_batch_invariant.py --out "$OUT" 2>&1 \
      | grep -E "\||wrote|Error" ;;
    sanitize-leftpad)
      timeout 250 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py leftpad-invariant 2>&1 | tail -3
      timeout 250 compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py leftpad-invariant 2>&1 | tail -3 ;;
    tests-invariant) "${PYTEST[@]}" tests/test_decode_batch_invariant.py 2>&1 | tail -3 ;;
    batch-idx) timeout 300 python3 benchmarks/probe_decode_batch_idx.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    softcap) timeout 300 python3 benchmarks/probe_decode_softcap.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    fp8-tiles) timeout 400 python3 benchmarks/probe_decode_fp8_tiles.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    fp8-asm) fp8_ab LEANATTN_FP8_ASM fp8_asm "lean,fp8" ;;
    fp8-grouped-once) fp8_default_ab ;;
    fp8-convert-once) fp8_ab LEANATTN_FP8_CONVERT_ONCE fp8_convert_once "lean,fp8,fp8 tiles 32x3" ;;
    mla-fp8-tiles) timeout 300 python3 benchmarks/probe_mla.py --out "$OUT" \
      --variants "lean,fp8,fp8 tiles 64x4,fp8 tiles 32x3,fp8 tiles 32x5" 2>&1 | grep -E "floor|wrote|Error|failed" ;;
    fp8-quick) timeout 200 python3 benchmarks/bench_decode_fp8.py --cases "mha B=1 64k,gqa B=4 32k,gqa B=64 4k" --out "$OUT" \
      2>&1 | grep -vi warn | tail -8 ;;
    fp8) timeout 400 python3 benchmarks/bench_decode_fp8.py --out "$OUT" 2>&1 | grep -vi warn | tail -16 ;;
    tests-one-sample) "${PYTEST[@]}" tests/test_bifurcated_gpu.py -k "one_sample and not sanitizer" 2>&1 | tail -3 ;;
    tests-overlap) "${PYTEST[@]}" tests/test_bifurcated_gpu.py -k "overlap and not sanitizer" 2>&1 | tail -3 ;;
    tests-all) "${PYTEST[@]}" tests/*_gpu.py -k "not sanitizer" 2>&1 | tail -3 ;;
    tests-tree-sparse) "${PYTEST[@]}" tests/test_tree_gpu.py tests/test_sparse_gpu.py tests/test_sparse.py::test_return_lse \
      -k "not sanitizer" 2>&1 | tail -3 ;;
    sanitize) compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py 2>&1 | tail -3 ;;
    tests-sparse-gqa) "${PYTEST[@]}" tests/test_sparse_gpu.py -k gqa tests/test_sparse_gqa.py 2>&1 | tail -3 ;;
    tests-sparse) "${PYTEST[@]}" tests/test_sparse_gpu.py -k "not gqa and not sanitizer" 2>&1 | tail -3 ;;
    tests-split-sum) "${PYTEST[@]}" tests/test_sparse_gpu.py -k split_sums 2>&1 | tail -3 ;;
    sanitize-sparse) timeout 250 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py sparse 2>&1 | tail -3 ;;
    racecheck-sparse)
      timeout 500 compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py sparse 2>&1 | tail -3 ;;
    racecheck-sparse-d64|racecheck-sparse-d128)
      timeout 500 compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py "${step#racecheck-}" 2>&1 \
        | tail -3 ;;
    racecheck-sparse-split)
      timeout 250 compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py sparse-split 2>&1 | tail -3 ;;
    sparse-gqa) timeout 400 python3 benchmarks/bench_sparse_gqa.py --out "$OUT" 2>&1 | grep -E "ms|wrote|Error" ;;
    sparse-bwd-configs) timeout 500 python3 benchmarks/probe_sparse_bwd_configs.py --out "$OUT" 2>&1 \
      | grep -E "us$|picks|trials|wrote|Error" ;;
    sparse-split) timeout 500 python3 benchmarks/probe_sparse_dkdv_split.py --out "$OUT" 2>&1 | grep -E "us$|wrote|Error" ;;
    sparse-tiles) timeout 500 python3 benchmarks/probe_sparse_tiles.py --out "$OUT" 2>&1 | grep -E "fwd/bwd|wrote|Error|Resources" ;;
    sparse-ab) src_ab sparse_ab "fwd/bwd|Error" timeout 150 python3 benchmarks/probe_sparse_tiles.py \
      --variants default ;;
    bif-ab) src_ab bif_ab "sweep|fail|Error" timeout 140 python3 benchmarks/bench_bifurcated.py --sweep \
      --configs "0;0" --cases "mha 8k x16,gqa 8k x64,gqa 32k x64,gqa 32k x256,mha 32k x256" ;;
    sparse-docs) timeout 400 python3 benchmarks/bench_sparse_docs.py --out "$OUT" 2>&1 | grep -E "ms|wrote|Error" ;;
    tests-mla-fp8) "${PYTEST[@]}" tests/test_mla_gpu.py -k fp8 2>&1 | tail -3 ;;
    tests-int8) "${PYTEST[@]}" tests/test_decode_int8.py -k "gpu or from_byte" 2>&1 | tail -3 ;;
    tests-flashinfer) "${PYTEST[@]}" tests/test_flashinfer_compat.py tests/test_flash_attn_compat.py 2>&1 | tail -3 ;;
    mla-topk) timeout 300 python3 benchmarks/probe_mla_topk.py --out "$OUT" 2>&1 | grep -E "floor|wrote|Error" ;;
    sanitize-merge) timeout 300 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py merge 2>&1 | tail -3 ;;
    racecheck-merge) timeout 300 compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py merge 2>&1 | tail -3 ;;
    sanitize-append)
      timeout 200 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py append 2>&1 | tail -3
      timeout 200 compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py append 2>&1 | tail -3 ;;
    sanitize-decode) timeout 300 compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py decode 2>&1 | tail -3 ;;
    sanitize-db) compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py decode bifurcated 2>&1 | tail -3 ;;
    racecheck) compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py decode 2>&1 | tail -3 ;;
    sanitize-bif) compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py bifurcated 2>&1 | tail -3 ;;
    sanitize-concat)
      compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py concat 2>&1 | tail -2
      compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py concat 2>&1 | tail -2 ;;
    racecheck-bif) compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py bifurcated 2>&1 | tail -3 ;;
    sanitize-overlap)
      compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py overlap 2>&1 | tail -2
      compute-sanitizer --tool racecheck python3 benchmarks/sanitize.py overlap 2>&1 | tail -2 ;;
    decode) python3 benchmarks/bench_decode.py --out "$OUT" 2>&1 | grep "Summary" ;;
    bifurcated) python3 benchmarks/bench_bifurcated.py --cases 8k --out "$OUT" 2>&1 | grep "Summary" ;;
    bifurcated-all) python3 benchmarks/bench_bifurcated.py --cases 8k,16k,32k --budget-s 260 --out "$OUT" 2>&1 | grep "Summary" ;;
    bif-overlap)
      python3 benchmarks/bench_bifurcated.py --sweep --out "$OUT" --cases "$(echo {mha,gqa}\ 8k\ x{4,16,32,64,256} | sed 's/ \([mg]\)/,\1/g'),gqa 32k x64,gqa 16k x256,mha 32k x16" \
        --configs "0;0,0,0,0,0,0,0,0,0,3;0" 2>&1 | grep -E "sweep|fail" ;;
    bif-overlap-rule)
      python3 benchmarks/bench_bifurcated.py --sweep --out "$OUT" --cases "x16,x32,x64,x256" \
        --configs "0,0,0,0,0,0,0,0,0,3;0,0,0,0,1,0,0,0,0,4;0,0,0,0,2,0,0,0,0,4" 2>&1 | grep -E "sweep|fail" ;;
    bif-prefix-rows)
      python3 benchmarks/bench_bifurcated.py --sweep --out "$OUT" \
        --cases "x16,x256,gqa 8k x64,gqa 16k x64,gqa 32k x64,mha 8k x64,gqa 16k x32" \
        --configs "0;0,0,8,3,1,0,0,0,0,4;0,0,8,4,1,0,0,0,0,4;0,0,8,2,1,0,0,0,0,4;0,0,0,0,0,0,0,0,0,4;0" 2>&1 \
        | grep -E "sweep|fail" ;;
    bif-leads)
      for cfg in "" 0,0,0,0,0,2 0,0,0,0,0,3 0,0,0,2,0,3; do
        d="$OUT/leads_$(echo "${cfg:-default}" | tr , _)"; mkdir -p "$d"
        LEANATTN_BIFURCATED_CONFIG=$cfg python3 benchmarks/bench_bifurcated.py --cases "mha 8k x1,gqa 8k x1,mha 8k x32,gqa 8k x32" \
          --out "$d" 2>&1 \
          | grep -E "x1 \||x32 \|" | awk -F'|' -v c="${cfg:-default}" '{print c, $2, "ours", $5, "decode-copied", $11, "x decode", $17}'
        rm -f "$d"/*.png
      done ;;
    headdim-sweep)
      python3 benchmarks/bench_decode.py --sweep --tag _d64 --out "$OUT" --cases "d64 mha B=1 64k" \
        --configs "0,0,0,0;256,4,2,2;256,8,2,2;128,4,3,3;128,8,2,2;128,4,2,2;0,0,0,0" 2>&1 | grep -E "sweep|fail"
      python3 benchmarks/bench_decode.py --sweep --tag _d256 --out "$OUT" --cases "d256 16/8 B=1 32k" \
        --configs "0,0,0,0;32,4,3,2;32,4,3,3;32,8,3,2;64,4,2,2;64,8,2,1;128,4,2,2,0,0,2;64,4,2,2,0,0,2;0,0,0,0" 2>&1 \
        | grep -E "sweep|fail" ;;
    read-gap) timeout 300 python3 benchmarks/probe_decode_read_gap.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    even) timeout 400 python3 benchmarks/probe_decode_even.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    grid-search) timeout 300 python3 benchmarks/probe_decode_grid_search.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    read-gap-cand)
      for run in 1_256 2_32 3_256; do c=${run#*_}; mkdir -p "$OUT/run$run"; echo "candidates $c"
        LEANATTN_SCHEDULE_CANDIDATES=$c timeout 150 python3 benchmarks/probe_decode_read_gap.py --out "$OUT/run$run" 2>&1 | grep -E "\||Error"; done ;;
    decode-short) python3 benchmarks/probe_decode_short.py --out "$OUT" 2>&1 | grep -vi warning | tail -6 ;;
    host) python3 benchmarks/host_overhead.py --out "$OUT" 2>&1 | grep -vi warning | tail -5 ;;
    decode-eager) python3 benchmarks/probe_decode_eager.py --out "$OUT" 2>&1 | grep -vi warning | tail -6 ;;
    pdl) python3 benchmarks/probe_pdl.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    order) python3 benchmarks/probe_order.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    ncu-x1)
      ncu -k "regex:concat_decode_kernel|lean_decode_kernel" --launch-skip 4 --launch-count 2 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SourceCounters \
        --section Occupancy --section LaunchStats python3 benchmarks/ncu_one_sample.py > "$OUT/ncu_one_sample.txt" 2>&1
      grep -E "concat_decode_kernel|lean_decode_kernel|Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Issued Ipc|one-sample" "$OUT/ncu_one_sample.txt" | head -40 ;;
    ncu-x1-source)
      ncu -k "regex:concat_decode_kernel|lean_decode_kernel" --launch-skip 4 --launch-count 2 --set full \
        --import-source yes -o "$OUT/x1_full" python3 benchmarks/ncu_one_sample.py > "$OUT/ncu_x1_full.log" 2>&1
      tail -3 "$OUT/ncu_x1_full.log"
      ncu -i "$OUT/x1_full.ncu-rep" --page source --csv --print-source sass > "$OUT/x1_sass.csv" 2>&1
      echo "source page rc $? $(wc -c < "$OUT/x1_sass.csv") bytes"; head -c 400 "$OUT/x1_sass.csv"; echo
      ncu -i "$OUT/x1_full.ncu-rep" --page details --print-details all > "$OUT/x1_details.txt" 2>&1
      grep -iE "stall|warp cycles per issued|^  [a-z_]+_kernel" "$OUT/x1_details.txt" | head -60 ;;
    waves) python3 benchmarks/probe_waves.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    ncu-balance)
      ncu --profile-from-start off --metrics gpu__time_duration.sum,gpc__cycles_elapsed.max,sm__cycles_active.min,sm__cycles_active.avg,sm__cycles_active.max,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size \
        python3 benchmarks/ncu_balance.py > "$OUT/ncu_balance.txt" 2>&1
      grep -vE "^==PROF==|^\s*$|^\s*-" "$OUT/ncu_balance.txt" | cut -c1-110 | head -40 ;;
    ncu-gap)
      # lean with and without cache_seqlens and split, merges in a second launch as in graphs (decode probe 46)
      m=gpu__time_duration.sum,sm__cycles_active.min,sm__cycles_active.avg,sm__cycles_active.max,gpc__cycles_elapsed.max
      m=$m,smsp__inst_executed.sum,launch__grid_size,launch__registers_per_thread,smsp__warps_launched.sum
      for r in no_instruction long_scoreboard barrier wait branch_resolving; do m=$m,smsp__warps_issue_stalled_$r.sum; done
      LEANATTN_DECODE_MERGE=1 ncu --profile-from-start off --metrics "$m" \
        python3 benchmarks/ncu_balance.py --case "mha B=1 16k" --methods lean,lean_full,split > "$OUT/ncu_gap.txt" 2>&1
      grep -vE "^==PROF==|^\s*$|^\s*-" "$OUT/ncu_gap.txt" | cut -c1-110 | head -80 ;;
    x1-overhead) python3 benchmarks/probe_x1_overhead.py --out "$OUT" 2>&1 | grep -E "\||us:|kernels|wrote|Error" ;;
    x1-alloc) python3 benchmarks/probe_x1_alloc.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    overlap-own) python3 benchmarks/probe_overlap_own.py --out "$OUT" 2>&1 | grep -E "\||plans|wrote|Error" ;;
    overlap-graphs) python3 benchmarks/probe_overlap_graphs.py --out "$OUT" 2>&1 | grep -E "x256|wrote|Error" ;;
    x1-context) python3 benchmarks/probe_x1_context.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    prefix-rows) python3 benchmarks/probe_prefix_rows.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    ws-prefix) timeout 180 python3 benchmarks/probe_ws_prefix.py --out "$OUT" 2>&1 | grep -E "TFLOP|wrote|Error" ;;
    ws-stress)
      for c in "gqa 16k x64" "gqa 16k x256" "gqa 32k x64" "gqa 32k x256" "mha 32k x256"; do
        timeout 120 python3 benchmarks/probe_ws_prefix.py --stress 20 --cases "$c" 2>&1 | grep -E "checked|rounds|Error|error" | tail -8
      done ;;
    pingpong)
      timeout 200 python3 benchmarks/probe_ws_prefix.py --out "$OUT" 2>&1 | grep -E "TFLOP|wrote|Error"
      timeout 150 "${PYTEST[@]}" tests/test_bifurcated_gpu.py -k pingpong 2>&1 | tail -2
      compute-sanitizer --tool memcheck python3 benchmarks/sanitize.py overlap-pingpong 2>&1 | tail -2 ;;
    racecheck-ws-minimal)
      for variant in plain barriers; do
        compute-sanitizer --tool racecheck --print-limit 10 python3 benchmarks/racecheck_ws_minimal.py $variant \
          > "$OUT/racecheck_ws_minimal_$variant.txt" 2>&1
        grep -E "SUMMARY|ws minimal|Race|access" "$OUT/racecheck_ws_minimal_$variant.txt" | head -6
      done ;;
    racecheck-ws)
      compute-sanitizer --tool racecheck --print-limit 40 python3 benchmarks/sanitize.py overlap-ws > "$OUT/racecheck_ws.txt" 2>&1
      grep -E "SUMMARY|launches done" "$OUT/racecheck_ws.txt"
      compute-sanitizer --tool racecheck --print-limit 40 python3 benchmarks/sanitize.py overlap > "$OUT/racecheck_overlap.txt" 2>&1
      grep -E "SUMMARY" "$OUT/racecheck_overlap.txt" ;;
    bif-ws)
      timeout 240 python3 benchmarks/bench_bifurcated.py --sweep --out "$OUT" --cases "x256,gqa 8k x64,gqa 16k x64,gqa 32k x64" \
        --configs "0;0,0,12,3,1,0,0,0,0,4;0,0,12,4,1,0,0,0,0,4;0" 2>&1 | grep -E "sweep|fail" ;;
    overlap-pingpong) timeout 300 python3 benchmarks/probe_overlap_pingpong.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    overlap-room) timeout 200 python3 benchmarks/probe_overlap_room.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    overlap-phases) timeout 300 python3 benchmarks/probe_overlap_phases.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    merge-layout) timeout 200 python3 benchmarks/probe_merge_layout.py --out "$OUT" 2>&1 | grep -E "M=|wrote|Error" ;;
    overlap-pdl-merge) timeout 300 python3 benchmarks/probe_overlap_pdl_merge.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    overlap-ordered) python3 benchmarks/probe_overlap_ordered.py --out "$OUT" 2>&1 | grep -E "\||rounds|wrote|Error" ;;
    piece-offsets) python3 benchmarks/probe_piece_offsets.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    one-per-sm) python3 benchmarks/probe_one_per_sm.py --out "$OUT" 2>&1 | grep -E "\||grids|wrote|Error" ;;
    grid-cap) python3 benchmarks/probe_grid_at_capacity.py --out "$OUT" 2>&1 | grep -E "\||grids|wrote|Error" ;;
    decode-d64) python3 benchmarks/probe_decode_d64.py --out "$OUT" 2>&1 | grep -E "d64|fixed|wrote|Error" ;;
    piece-inline) python3 benchmarks/probe_piece_inline.py --out "$OUT" 2>&1 | grep -E "\||wrote|Error" ;;
    decode-merge-d64) python3 benchmarks/probe_decode_merge.py --cases d64 --out "$OUT" 2>&1 | grep -vi warning | tail -6 ;;
    decode-merge) python3 benchmarks/probe_decode_merge.py --out "$OUT" 2>&1 | grep -vi warning | tail -30 ;;
    d256-shapes) python3 benchmarks/probe_decode_d256.py --out "$OUT" 2>&1 | grep -E "sweep|fail|wrote" ;;
    bif-prefix-shapes)
      python3 benchmarks/bench_bifurcated.py --sweep --out "$OUT" \
        --cases "gqa 8k x16,gqa 8k x64,gqa 32k x64,gqa 16k x256,mha 8k x64" \
        --configs "0;0,0,0,0,0,0,0,0,0,1;128,0,8,3,0,0,0,0,0,1;128,128,8,2,0,0,0,0,0,1;0" 2>&1 | grep -E "sweep|fail" ;;
    decode-load)
      python3 benchmarks/bench_decode.py --sweep --tag _load --out "$OUT" \
        --configs "0,0,0,0;0,0,0,0,0,0,1;0,0,0,0,0,0,2;128,4,2,2,0,0,2;128,4,3,4,0,0,2;64,4,3,4,0,0,2" 2>&1 \
        | grep -E "sweep|fail" ;;
    *) echo "unknown step $step" ;;
  esac
  [ -f "/tmp/junit/$step.xml" ] && python3 benchmarks/junit_times.py "/tmp/junit/$step.xml" >> "$OUT/test_times.txt"
  python3 benchmarks/triton_cache.py pack "$TRITON_CACHE_DIR" "$OUT/triton_cache.tar.xz"
done
# (the tee of $OUT/gpu_check.log ends after this shell: give it a moment to write the last lines)
sleep 1
