"""docs/BENCHMARKS.md from the suite's JSON: the targets table first, then every section's measurements.

    python -m bench.report bench/results/cpu.json docs/BENCHMARKS.md   # re-render without measuring

Nothing here measures or hard-codes a result: every number comes from the JSON of one run.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

TARGETS = {
    "ort_vs_probe": 0.75,       # ORT encode/decode achieved GFLOP/s over the ORT MatMul probe, batch 8
    "ort_vs_torch": 1.0,        # ORT images/s over torch eager images/s
    "served_vs_raw": 0.90,      # served throughput over raw ORT at the same batch, concurrency >= 8
    "p50_over_raw_ms": 10.0,    # p50 at concurrency 1 minus one raw batch-1 inference
    "rotation_overhead": 0.05,  # rotation / STE step time - 1
    "gpu_encode_fp16": 2000.0,  # images/s at 256², default model, fp16, GPU
}


def _f(x, fmt: str = ".1f", unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:{fmt}}{unit}"


def _ok(met: bool | None) -> str:
    return "not measured" if met is None else ("**met**" if met else "**not met**")


def probe_gflops(res: dict, engine: str) -> float | None:
    """The machine limit for `engine`: the larger median of the probes taken before and after the model section."""
    vals = [(res.get(k) or {}).get(engine, {}).get("gflops") for k in ("probe", "probe_end")]
    vals = [v for v in vals if v]
    return max(vals) if vals else None


def _rows(model: dict, backend: str, graph: str) -> dict[int, dict]:
    return {r["batch"]: r for r in model.get("rows", []) if r["backend"] == backend and r["graph"] == graph}


def gpu_results(res: dict) -> dict:
    """The run's own GPU section when it has one, else bench/results/cuda.json (written by `python -m bench.gpu` on
    a GPU machine) when present: GPUs are measured in separate, shorter sessions than the CPU suite."""
    gpu = res.get("gpu") or {}
    if gpu.get("rows"):
        return gpu
    path = Path(__file__).resolve().parent / "results" / "cuda.json"
    if path.is_file() and not res.get("config", {}).get("smoke"):
        return json.loads(path.read_text()) | {"source": "bench/results/cuda.json"}
    return gpu


def targets(res: dict) -> list[tuple[str, str, str]]:
    """(target, measured, status) rows."""
    out: list[tuple[str, str, str]] = []
    model = res.get("model", {})
    ort_probe = probe_gflops(res, "onnxruntime")
    hb = res.get("config", {}).get("headline_batch", 8)
    size = model.get("flops", {}).get("image_size", "?")
    for graph in ("encode", "decode"):
        r = _rows(model, "onnxruntime-cpu-fp32", graph).get(hb)
        limit = (r or {}).get("probe_gflops") or ort_probe
        if r and limit:
            ratio = r["achieved_gflops"] / limit
            out.append((f"ORT CPU fp32 {graph}, batch {hb}, {size}²: ≥ 75 % of the ORT MatMul probe",
                        f"{100 * ratio:.0f} % ({r['achieved_gflops']:.1f} of {limit:.1f} GFLOP/s, probe in the same "
                        f"rounds; {r['images_per_s']:.2f} img/s)", _ok(ratio >= TARGETS["ort_vs_probe"])))
        else:
            out.append((f"ORT CPU fp32 {graph} ≥ 75 % of the probe", "—", _ok(None)))
    for graph in ("encode", "decode"):
        ort_rows = _rows(model, "onnxruntime-cpu-fp32", graph)
        pt_rows = _rows(model, "torch-eager-cpu-fp32", graph)
        ratios = {b: ort_rows[b]["images_per_s"] / pt_rows[b]["images_per_s"] for b in ort_rows if b in pt_rows}
        if ratios:
            txt = ", ".join(f"b{b}: {v:.2f}×" for b, v in sorted(ratios.items()))
            out.append((f"ORT ≥ PyTorch eager on CPU, {graph} (images/s ratio)", txt,
                        _ok(all(v >= TARGETS["ort_vs_torch"] for v in ratios.values()))))
        else:
            out.append((f"ORT ≥ PyTorch eager on CPU, {graph}", "—", _ok(None)))
    serve = res.get("serving", {})
    srows = serve.get("rows", [])
    if srows:
        hi = [r for r in srows if r["concurrency"] >= 8]
        txt = "; ".join(f"{r['endpoint']} c{r['concurrency']}: {100 * r['served_over_raw']:.0f} %" for r in hi) or \
            "no cell at concurrency ≥ 8"
        out.append(("Served throughput ≥ 90 % of raw ORT at the same batch, concurrency ≥ 8", txt,
                    _ok(all(r["served_over_raw"] >= TARGETS["served_vs_raw"] for r in hi) if hi else None)))
        one = [r for r in srows if r["concurrency"] == 1]
        txt = "; ".join(f"{r['endpoint']}: p50 {r['p50_ms']:.1f} ms vs raw {r['raw']['ms_per_batch']:.1f} ms "
                        f"({r['p50_minus_raw_batch_ms']:+.1f})" for r in one)
        out.append(("p50 latency at concurrency 1 within 10 ms of one raw inference", txt,
                    _ok(all(r["p50_minus_raw_batch_ms"] <= TARGETS["p50_over_raw_ms"] for r in one) if one else None)))
    else:
        out.append(("Served ≥ 90 % of raw ORT; p50 at c=1 within 10 ms", serve.get("skipped", "—"), _ok(None)))
    st = res.get("training", {}).get("step_time")
    if st and "median_ratio" in st:
        out.append(("Rotation trick step-time overhead ≤ 5 % vs STE",
                    f"{st['overhead_pct']:+.1f} % (median of {st['repeats']} paired steps; quantizer alone "
                    f"{st['quantizer_delta_ms']:+.2f} ms = {st['quantizer_delta_pct_of_step']:+.2f} % of a step)",
                    _ok(st["overhead_pct"] <= 100 * TARGETS["rotation_overhead"])))
    else:
        out.append(("Rotation trick step-time overhead ≤ 5 % vs STE", "—", _ok(None)))
    pipe = res.get("pipeline") or {}
    if "ratio" in pipe:
        out.append(("Dataset tokenization (`vqtok tokenize`, local engine) ≥ 90 % of raw ORT encode, same batch",
                    f"{100 * pipe['ratio']:.0f} % by wall time ({pipe['pipeline_img_s']:.1f} vs "
                    f"{pipe['raw_encode_img_s']:.1f} img/s, batch {pipe['batch_size']}); per CPU-second "
                    f"{100 * pipe.get('cpu_ratio', float('nan')):.0f} %", _ok(pipe["ratio"] >= 0.9)))
    else:
        out.append(("Dataset tokenization ≥ 90 % of raw ORT encode", pipe.get("skipped", "—"), _ok(None)))
    gpu = gpu_results(res)
    gl = [r for r in gpu.get("rows", []) if r.get("backend") == "onnxruntime-cuda-fp16" and r.get("graph") == "encode"
          and r.get("variant", "default") == "default" and "images_per_s" in r]
    if gl:
        best = max(gl, key=lambda r: r["images_per_s"])
        out.append(("GPU: encode ≥ 2,000 img/s at 256², fp16",
                    f"{best['images_per_s']:,.0f} img/s (batch {best['batch']}; {gpu.get('gpu', 'GPU').split(',')[0]}, "
                    f"{gpu.get('date_utc', '')})", _ok(best["images_per_s"] >= TARGETS["gpu_encode_fp16"])))
    else:
        out.append(("GPU: encode ≥ 2,000 img/s at 256², fp16", f"not measured: {gpu.get('skipped', 'no GPU run')}",
                    _ok(None)))
    gs = [r for r in (gpu.get("serving", {}).get("rows") or []) if r["concurrency"] >= 8]
    for v in gpu.get("serving", {}).get("variants", []):
        gs += [r | {"layout": v["label"]} for r in v["rows"]]
    if gs:
        best = max(gs, key=lambda r: r["served_over_raw"])
        worst = min(gs, key=lambda r: r["served_over_raw"])
        out.append(("GPU: served ≥ 90 % of raw ORT at c ≥ 8",
                    f"{100 * worst['served_over_raw']:.0f}–{100 * best['served_over_raw']:.0f} % "
                    f"(best: {best['endpoint']} c{best['concurrency']}, {best['throughput_rps']:.0f} req/s vs raw "
                    f"{best['raw']['images_per_s']:,.0f} img/s at batch {best['raw']['batch']}"
                    f"{', ' + best['layout'] if 'layout' in best else ''})",
                    _ok(worst["served_over_raw"] >= TARGETS["served_vs_raw"])))
    else:
        out.append(("GPU: served / raw ORT", f"not measured: {gpu.get('skipped', 'no GPU run')}", _ok(None)))
    wall = res.get("wall_s")
    if wall is not None and not res.get("config", {}).get("smoke"):
        out.append(("Suite reproduces this page on CPU in < 10 min", f"{wall / 60:.1f} min", _ok(wall < 600)))
    return out


def findings(res: dict) -> list[str]:
    """Sentences that read the measurements against the targets (every figure comes from `res`)."""
    out: list[str] = []
    ort_probe = probe_gflops(res, "onnxruntime")
    prof = res.get("profile") or {}
    for g in ("encode", "decode"):
        p = prof.get(g)
        if not p or not ort_probe or "conv_gflops" not in p:
            continue
        other = sorted(((op, sh) for op, sh in p["by_op_share"].items() if "Conv" not in op), key=lambda kv: -kv[1])
        conv_eff = p["conv_gflops"] / ort_probe
        out.append(
            f"ORT {g} (batch {prof['batch']}): Conv kernels take {100 * p['conv_time_share']:.0f} % of kernel time and "
            f"carry {100 * p['conv_flop_share']:.0f} % of the counted FLOPs; they run at {p['conv_gflops']:.0f} GFLOP/s = "
            f"{100 * conv_eff:.0f} % of the MatMul probe. The other {100 * (1 - p['conv_time_share']):.0f} % of the time "
            f"goes to the other ops (memory-bound unless named MatMul): " + ", ".join(f"{op} {100 * sh:.0f} %" for op, sh in other[:5]) +
            f". Were every non-Conv op free, the graph would reach about "
            f"{100 * conv_eff / max(p['conv_flop_share'], 1e-9):.0f} % of the probe (Conv speed over the Conv share of "
            "the FLOPs).")
    srv = res.get("serving") or {}
    one = {r["endpoint"]: r for r in srv.get("rows", []) if r["concurrency"] == 1}
    for v in srv.get("variants", []):
        if "window" not in v["label"]:
            continue
        for r in v["rows"]:
            base = one.get(r["endpoint"]) if r["concurrency"] == 1 else None
            if base:
                gain = base["p50_minus_raw_batch_ms"] - r["p50_minus_raw_batch_ms"]
                why = ("a lone request waits for the batching window to close before it runs" if gain >= 5 else
                       "the batching window is not what separates served from raw latency here")
                out.append(f"Concurrency 1, {r['endpoint']}: p50 − raw is {base['p50_minus_raw_batch_ms']:+.1f} ms with the "
                           f"default {1e3 * srv.get('batch_timeout_s', 0.002):g} ms batching window and "
                           f"{r['p50_minus_raw_batch_ms']:+.1f} ms with \"{v['label']}\": {why}.")
    hi = [r for r in srv.get("rows", []) if r["concurrency"] >= 8 and r.get("cpu_ms_per_request")]
    if hi:
        share = [(r["cpu_ms_per_request"]["server_http"] + r["cpu_ms_per_request"]["load_generator"]) /
                 max(1e-9, sum(r["cpu_ms_per_request"].values())) for r in hi]
        out.append(f"At concurrency ≥ 8 the HTTP front end and the load generator use {100 * min(share):.0f}–"
                   f"{100 * max(share):.0f} % of the CPU time per request (the rest is the inference worker); on this "
                   f"{(res.get('machine') or {}).get('cores', '?')}-core machine they share the cores with ONNX Runtime, "
                   "so that share comes straight off the served/raw ratio.")
    by = {(r["endpoint"], r["concurrency"]): r for r in srv.get("rows", [])}
    for v in srv.get("variants", []):
        if "default threads" in v["label"]:
            for r in v["rows"]:
                base = by.get((r["endpoint"], r["concurrency"]))
                if base:
                    out.append(f"{r['endpoint']} at C={r['concurrency']}: {r['throughput_rps']:.2f} req/s with the server's "
                               f"default thread split (no --threads: max(1, cores // (workers × 3 endpoints)) ORT threads per "
                               f"worker, {max(1, int((res.get('machine') or {}).get('cores', 3)) // 3)} here) vs "
                               f"{base['throughput_rps']:.2f} req/s with --threads {srv.get('threads')}.")
    st = (res.get("training") or {}).get("step_time") or {}
    if "quantizer_delta_ms" in st:
        out.append(f"Rotation vs STE: the quantizer's forward + backward differs by {st['quantizer_delta_ms']:+.2f} ms "
                   f"({st['quantizer_delta_pct_of_step']:+.2f} % of a {1e3 * st['median_ste_s']:.0f} ms step); the full-step "
                   f"ratio {st['median_ratio']:.3f} is that plus timing noise of the whole step.")
    return out


def render(res: dict) -> str:
    m = res.get("machine", {})
    cfg = res.get("config", {})
    ort_probe = probe_gflops(res, "onnxruntime")
    torch_probe = probe_gflops(res, "torch")
    L: list[str] = ["# vqtok benchmarks", ""]
    L += ["Generated by the benchmark suite from `bench/results/" + Path(cfg.get("out", "cpu.json")).name +
          "`; do not edit by hand. Reproduce (CPU, one command):", "",
          "```", cfg.get("command", "nice -n 19 python -m bench"), "```", "",
          "Smoke version (tiny model and sizes, seconds; run in CI by `tests/test_bench_smoke.py`): "
          "`python -m bench --smoke --out /tmp/bench.json --doc /tmp/BENCHMARKS.md`.", ""]
    L += [f"- **Measured:** {res.get('date_utc', '?')} on {cfg.get('machine_note') or 'this machine'} "
          f"({m.get('cpu', '?')}, {m.get('cores', '?')} cores visible, {m.get('memory_gib', '?')} GiB, "
          f"SIMD {', '.join(m.get('simd', [])) or '?'}); ONNX Runtime {m.get('onnxruntime', '?')}, "
          f"torch {m.get('torch', '?')}, Python {m.get('python', '?')}.",
          f"- **Model:** `{res.get('model_id', '?')}` ({res.get('model_choice', '?')}), graphs "
          f"`{res.get('graph_files', '?')}` (what `OnnxTokenizer.from_pretrained` loads).",
          f"- **Suite wall time:** {_f(res.get('wall_s', float('nan')) / 60, '.1f')} min. "
          f"Load average at start {', '.join(f'{x:.1f}' for x in m.get('load_avg_at_start', []))}; 1-minute load at "
          "each section's start: " + (", ".join(f"{k} {v:.1f}" for k, v in res.get("load_avg_1min", {}).items()) or "—")
          + f" ({m.get('cores', '?')} cores)."]
    v = res.get("validity", {})
    if v.get("training_seen"):
        L += [f"- **Validity warning:** the priority training job (`{v.get('pattern')}`) was running during "
              f"this run (seen in: {', '.join(v.get('seen_in', []))}); absolute numbers are depressed and ratios "
              "noisier than on an idle machine."]
    else:
        L += [f"- **Validity:** no `{v.get('pattern', 'vqtok train')}` process was running at any section "
              "boundary of this run; other engineers' jobs may still have shared the machine (see load average)."]
    if v.get("waited_s"):
        L += [f"- Waited {v['waited_s'] / 60:.1f} min for the training job before measuring "
              f"({'it finished' if not v.get('gave_up_waiting') else 'gave up at the deadline and measured anyway'})."]
    L += ["", "Numbers are medians; every comparison (ORT vs torch, served vs raw, rotation vs STE, model vs probe) is a "
          "ratio of measurements taken in this one run, interleaved where possible, because absolute times drift on "
          "this shared machine.", ""]

    L += ["## Targets", "", "| target | measured | status |", "|---|---|---|"]
    L += [f"| {a} | {b} | {c} |" for a, b, c in targets(res)]
    L += [""]

    probe = res.get("probe")
    if probe and "n" in probe:
        L += ["## 1. Machine probe", "",
              f"fp32 MatMul {probe['n']}×{probe['n']}, {probe['threads']} threads, ORT and torch interleaved; taken "
              "before the model section and again after it. The limit used for every \"vs probe\" ratio is the larger "
              "of the two medians (conservative for our ratios).", "",
              "| engine | when | GFLOP/s (median) | GFLOP/s (best) | runs |", "|---|---|---|---|---|"]
        for k in ("onnxruntime", "torch"):
            for when, pr in (("before", probe), ("after", res.get("probe_end"))):
                if pr and k in pr:
                    L.append(f"| {k} | {when} | {pr[k]['gflops']:.1f} | {pr[k]['gflops_best']:.1f} | {pr[k]['n']} |")
        L += [""]

    model = res.get("model")
    if model and model.get("flops") and model.get("rows"):
        fl = model["flops"]
        L += ["## 2. Model efficiency", "",
              f"FLOPs counted with `torch.utils.flop_counter.FlopCounterMode` on the exported computation "
              f"(`export.onnx.EncoderGraph` / `DecoderGraph`), {fl['image_size']}², 1 multiply-add = 2 FLOP; "
              "convolutions, matmuls and attention only (GroupNorm, SiLU and other element-wise work is not counted, "
              f"so achieved GFLOP/s is conservative). Parameters: {fl['params'] / 1e6:.2f} M "
              f"(encoder {fl['encoder_params'] / 1e6:.2f} M, decoder {fl['decoder_params'] / 1e6:.2f} M).", "",
              "| graph | GFLOP / image | by op |", "|---|---|---|"]
        for g in ("encode", "decode"):
            by = ", ".join(f"{k.split('.')[-1]} {v / 1e9:.2f}" for k, v in sorted(fl[g]["by_op"].items(), key=lambda kv: -kv[1]))
            L.append(f"| {g} | {fl[g]['flop_per_image'] / 1e9:.2f} | {by} |")
        L += ["", f"Throughput at {fl['image_size']}² (ORT through `OnnxTokenizer` with its default session options; "
              "torch eager runs the same modules under `inference_mode`). \"vs probe\" divides by the MatMul probe of the "
              "same engine (ORT for ORT, torch for torch) timed inside the same interleaved rounds as the row, so a "
              "change of background load hits both.", "",
              "| backend | graph | batch | images/s | ms / batch | achieved GFLOP/s | probe GFLOP/s (same rounds) | "
              "vs probe | runs |", "|---|---|---|---|---|---|---|---|---|"]
        for r in model["rows"]:
            p = r.get("probe_gflops") or (ort_probe if r["backend"].startswith("onnxruntime") else torch_probe)
            L.append(f"| {r['backend']} | {r['graph']} | {r['batch']} | {r['images_per_s']:.2f} | "
                     f"{r['ms_per_batch']:.1f} | {r['achieved_gflops']:.1f} | {_f(p, '.0f')} | "
                     f"{_f(100 * r['achieved_gflops'] / p if p else float('nan'), '.0f', ' %')} | {r['n']} |")
        L += [""]
    prof = res.get("profile")
    if prof and "encode" in prof:
        L += [f"### Where ONNX Runtime spends the time (batch {prof['batch']}, ORT profiler)", "",
              "| graph | run ms | Conv share of kernel time | Conv GFLOP/s (Conv FLOPs / Conv time) | "
              "Conv vs ORT probe | top ops by time |", "|---|---|---|---|---|---|"]
        for g in ("encode", "decode"):
            p = prof[g]
            top = ", ".join(f"{op} {100 * s:.0f} %" for op, s in list(p["by_op_share"].items())[:6])
            cvp = 100 * p.get("conv_gflops", float("nan")) / ort_probe if ort_probe else float("nan")
            L.append(f"| {g} | {p['run_ms']:.1f} | {_f(100 * p.get('conv_time_share', float('nan')), '.0f', ' %')} | "
                     f"{_f(p.get('conv_gflops'), '.1f')} | {_f(cvp, '.0f', ' %')} | {top} |")
        L += [""]
    tune = res.get("tuning")
    if tune and tune.get("rows"):
        L += [f"### ORT session variants (batch {tune['batch']}, interleaved)", "",
              tune.get("note", ""), "",
              "| variant | encode img/s | decode img/s | encode vs runtime default | decode vs runtime default |",
              "|---|---|---|---|---|"]
        base = next((r for r in tune["rows"] if r["variant"] == tune.get("baseline")), None)
        same = next((r for r in tune["rows"] if r["variant"] == "plain, ALL, threads=cores"), None)
        caveat: list[str] = []
        if base and same and abs(same["encode_ips"] / base["encode_ips"] - 1) > 0.2:
            caveat = ["", f"Caveat: all variants' sessions live in one process and their thread pools interfere: "
                        f"\"plain, ALL, threads=cores\" is configured like the runtime default yet measured "
                        f"{same['encode_ips'] / base['encode_ips']:.2f}× its encoder speed in this run. Read the table "
                        "as indicative; the model and serving sections (one session pair each) are the reference."]
        for r in tune["rows"]:
            re_ = r["encode_ips"] / base["encode_ips"] if base else float("nan")
            rd = r["decode_ips"] / base["decode_ips"] if base else float("nan")
            L.append(f"| {r['variant']} | {r['encode_ips']:.2f} | {r['decode_ips']:.2f} | {re_:.2f}× | {rd:.2f}× |")
        L += caveat + [""]

    serve = res.get("serving")
    L += ["## 3. Serving", ""]
    if serve and serve.get("rows"):
        L += [f"A real `vqtok serve` on loopback (`{serve['server_command']}`; started in {serve['startup_s']:.0f} s), "
              f"loaded by `bench.serving` (async httpx, C coroutines sending back to back, bounded by count and "
              f"time). Uploads: a {serve['image_size']}² JPEG ({serve['upload_bytes'] / 1024:.0f} KiB) for encode and "
              "reconstruct, an .npy code grid for decode. Raw = `OnnxTokenizer` in the load generator's process, same "
              f"thread count ({serve['threads']}), at batch min(C, {serve['max_batch_size']}) = the batch the server "
              "forms, timed right before and right after each cell (mean of the two medians).", "",
              "| endpoint | C | req/s | raw img/s (batch) | served / raw | p50 ms | p95 ms | p99 ms | raw ms/batch | "
              "reply bytes | requests (errors) | CPU ms / request: worker, HTTP, load generator |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in serve["rows"]:
            cpu = r.get("cpu_ms_per_request") or {}
            cpu_txt = (f"{cpu['inference_workers']:.0f}, {cpu['server_http']:.1f}, {cpu['load_generator']:.1f}"
                       if cpu else "—")
            L.append(f"| {r['endpoint']} | {r['concurrency']} | {r['throughput_rps']:.2f} | "
                     f"{r['raw']['images_per_s']:.2f} ({r['raw']['batch']}) | {100 * r['served_over_raw']:.0f} % | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['raw']['ms_per_batch']:.1f} | "
                     f"{r['reply_bytes']:,} | {r['requests']} ({r['errors']}) | {cpu_txt} |")
        for v in serve.get("variants", []):
            L += ["", f"Variant **{v['label']}** (`{v['server_command']}`), same load generator and raw baselines:", "",
                  "| endpoint | C | req/s | served / raw | p50 ms | p95 ms | raw ms/batch | p50 − raw |",
                  "|---|---|---|---|---|---|---|---|"]
            L += [f"| {r['endpoint']} | {r['concurrency']} | {r['throughput_rps']:.2f} | {100 * r['served_over_raw']:.0f} % | "
                  f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['raw']['ms_per_batch']:.1f} | "
                  f"{r['p50_minus_raw_batch_ms']:+.1f} ms |" for r in v["rows"]]
        js = {r["concurrency"]: r for r in serve["rows"] if r["endpoint"] == "encode-json"}
        npy = {r["concurrency"]: r for r in serve["rows"] if r["endpoint"] == "encode-npy"}
        both = sorted(set(js) & set(npy))
        if both:
            L += ["", "JSON codes vs npy replies (encode): " + "; ".join(
                f"C={c}: JSON {js[c]['throughput_rps']:.2f} vs npy {npy[c]['throughput_rps']:.2f} req/s, p50 "
                f"{js[c]['p50_ms']:.1f} vs {npy[c]['p50_ms']:.1f} ms, {js[c]['reply_bytes']:,} vs "
                f"{npy[c]['reply_bytes']:,} bytes" for c in both) + "."]
        L += [""]
    else:
        L += [f"Not measured: {(serve or {}).get('skipped', 'section skipped')}.", ""]

    tr = res.get("training", {})
    L += ["## 4. Training step time: rotation trick vs STE", ""]
    st = tr.get("step_time")
    if st and "median_ratio" in st:
        L += [f"`bench.rotation_vs_ste.step_time_ratio` on the default model config: one fixed batch of "
              f"{st['batch_size']} × {st['crop']}², forward + backward, rotation and STE alternating on the same "
              f"model, {st['repeats']} timed pairs after 2 warm-up pairs, {st['threads']} threads.", "",
              "| rotation step (median) | STE step (median) | median per-pair ratio | overhead | quantizer fwd+bwd "
              "rotation / STE | quantizer delta (share of a step) |", "|---|---|---|---|---|---|",
              f"| {1e3 * st['median_rotation_s']:.1f} ms | {1e3 * st['median_ste_s']:.1f} ms | {st['median_ratio']:.3f} | "
              f"{st['overhead_pct']:+.1f} % | {st['quantizer_rotation_ms']:.2f} / {st['quantizer_ste_ms']:.2f} ms | "
              f"{st['quantizer_delta_ms']:+.2f} ms ({st['quantizer_delta_pct_of_step']:+.2f} %) |", ""]
    else:
        L += [f"Not measured: {tr.get('skipped', 'section skipped')}.", ""]

    L += ["## 5. Memory", ""]
    mem = (serve or {}).get("memory") if serve else None
    if mem:
        L += [f"- Server inference worker, peak RSS (VmHWM, largest of {mem['inference_workers']} workers, after the "
              f"serving load above): **{mem['worker_peak_rss_mib']:.0f} MiB**; all server processes together "
              f"(RSS at the end): {mem['total_rss_mib']:.0f} MiB over {len(mem['processes'])} processes."]
        by_name = mem.get("worker_peak_rss_mib_by_name") or {}
        if by_name:
            L += ["- Peak RSS per endpoint worker: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in sorted(by_name.items()))
                  + " (each loads only the graphs its endpoint runs)."]
    rss = tr.get("training_rss")
    if rss:
        tc = rss.get("train_config") or {}
        L += [f"- Training, peak RSS of the training process: **{rss['peak_rss_mib']:.0f} MiB** "
              f"(`{rss['command']}`; default TrainConfig: batch {tc.get('batch_size')}, crop {tc.get('crop')}, "
              f"perceptual {tc.get('perceptual')}, DataLoader workers {tc.get('workers')}; discriminator on from step "
              f"1; {rss['steps']} steps in {rss['wall_s']:.0f} s)."]
    if not mem and not rss:
        L += ["Not measured."]
    L += [""]

    pipe = res.get("pipeline")
    L += ["## Dataset tokenization (pipeline.bench)", ""]
    if pipe and "ratio" in pipe:
        cpu = (f" Per CPU-second of the whole process: {pipe['pipeline_img_per_cpu_s']:.2f} vs "
               f"{pipe['raw_img_per_cpu_s']:.2f} img (ratio {pipe['cpu_ratio']:.2f})." if "cpu_ratio" in pipe else "")
        both = (f", the faster of ORT's default session ({pipe['raw_ort_default_session_img_s']:.1f}) and the "
                f"pipeline's session without intra-op spin-waiting ({pipe['raw_pipeline_session_img_s']:.1f})"
                if "raw_ort_default_session_img_s" in pipe else "")
        L += [f"`pipeline.bench` (another module's benchmark, called by the suite) on the fixture photos repeated to "
              f"{pipe['images']} items, batch {pipe['batch_size']}: local engine {pipe['pipeline_img_s']:.1f} img/s vs "
              f"raw ORT encode {pipe['raw_encode_img_s']:.1f} img/s{both} (ratio {pipe['ratio']:.2f}; reading, "
              f"decoding, resizing and Parquet writing included).{cpu}", ""]
    else:
        L += [f"Not measured: {(pipe or {}).get('skipped', 'section skipped')}.", ""]

    L += render_gpu(gpu_results(res))
    found = findings(res)
    if found:
        L += ["## Findings (computed from the numbers above)", ""] + [f"- {f}" for f in found] + [""]
    notes = res.get("notes")
    if notes:
        L += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    errors = res.get("errors")
    if errors:
        L += ["## Sections that failed in this run", ""] + [f"- {k}: {v}" for k, v in errors.items()] + [""]
    return "\n".join(L)


def render_gpu(gpu: dict) -> list[str]:
    L = ["## GPU", ""]
    if not gpu.get("rows"):
        return L + [f"Not measured: {gpu.get('skipped', 'run `python -m bench.gpu` on a GPU machine')}. "
                    "`python -m bench.gpu` measures ONNX Runtime CUDA fp32 and fp16 against the GPU's MatMul probe, "
                    "and `vqtok serve --device cuda` against raw ONNX Runtime.", ""]
    src = f" (`{gpu['source']}`)" if gpu.get("source") else ""
    L += [f"Measured {gpu.get('date_utc', '')} on {gpu.get('gpu', 'a GPU')}, ONNX Runtime {gpu.get('onnxruntime', '?')} "
          f"CUDA EP{src}. {gpu.get('note', '')}", ""]
    for c in gpu.get("calls", []):
        L += [f"- call {c['call']} ({c['date_utc']}): `{c['command']}`"]
    pr = gpu.get("probe", {})
    L += ["", f"MatMul probe, ORT CUDA {pr.get('n', '?')}², operands resident on the GPU: fp32 "
          f"{_f((pr.get('fp32') or {}).get('gflops'), ',.0f')} GFLOP/s, fp16 {_f((pr.get('fp16') or {}).get('gflops'), ',.0f')} "
          "GFLOP/s. Model throughput is end to end from host memory (uint8 images in, codes out, copies included), "
          "the way `OnnxTokenizer` runs.", "",
          "| precision | CUDA provider options | graph | batch | images/s | ms / batch | GFLOP/s | vs probe |",
          "|---|---|---|---|---|---|---|---|"]
    for r in gpu["rows"]:
        if "error" in r:
            L += [f"| {r['backend'].rsplit('-', 1)[-1]} | {r['variant']} | — | — | {r['error'][:80]} | | | |"]
            continue
        L += [f"| {r['backend'].rsplit('-', 1)[-1]} | {r.get('variant', 'default')} | {r['graph']} | {r['batch']} | "
              f"{r['images_per_s']:,.0f} | {r['ms_per_batch']:.2f} | {r['achieved_gflops']:,.0f} | "
              f"{_f(100 * r['vs_probe'] if 'vs_probe' in r else None, '.1f', ' %')} |"]
    L += ["", "`default` is `OnnxTokenizer`'s CUDA default (heuristic cuDNN algorithm choice); `exhaustive` is ORT's "
          "own default search; `prefer_nhwc+exhaustive` came from call 1, before the heuristic default.", ""]
    sv = gpu.get("serving") or {}
    groups = [(sv.get("layout", "default layout"), sv.get("rows", []))]
    groups += [(v.get("layout", v["label"]), v["rows"]) for v in sv.get("variants", [])]
    groups += [(e.get("layout", "earlier"), e.get("rows", [])) for e in gpu.get("serving_earlier", [])]
    if sv.get("rows"):
        L += [f"Serving: `vqtok serve --device cuda --max-batch-size {sv.get('max_batch_size')}` on loopback, "
              "4 load-generator processes on the same machine; raw = ORT in the benchmark process at the batch the "
              "server can form (min(c, max batch)), timed before and after each cell.", "",
              "| server layout | endpoint | c | req/s | p50 / p95 / p99 ms | raw img/s (batch) | served / raw |",
              "|---|---|---|---|---|---|---|"]
        for label, rows in groups:
            for r in rows:
                L += [f"| {label} | {r['endpoint']} | {r['concurrency']} | {r['throughput_rps']:.0f} | "
                      f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} / {r['p99_ms']:.1f} | {r['raw']['images_per_s']:,.0f} "
                      f"({r['raw']['batch']}) | {100 * r['served_over_raw']:.1f} % |"]
    notes = gpu.get("notes") or []
    if notes:
        L += ["", "What the GPU numbers say (from the calls above):", ""] + [f"- {n}" for n in notes]
    return L + [""]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    src = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results" / "cpu.json"
    dst = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
    dst.write_text(render(json.loads(src.read_text())))
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
