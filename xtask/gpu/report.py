"""Writes gpu-report.md and gpu-report.json from the logs of one check.sh run (standard library only).

Usage: python3 report.py --work DIR --out DIR --device cuda|cpu --dry-run 0|1 --seconds S
Exit code: 0 when every step passed (on the CPU a "tf32" bench refused with exit 2 is expected and
passes), 1 otherwise.
"""
import argparse
import json
import os
import re

PEERS = ("torchfunc", "higher", "torchopt")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def last_json(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None


def tests_summary(out):
    """Passed/failed counts from libtest's "test result:" line, or the number listed (--list)."""
    m = re.search(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", out)
    if m:
        return {"passed": int(m[1]), "failed": int(m[2]), "ignored": int(m[3])}
    m = re.search(r"^(\d+) tests?, (\d+) benchmarks?$", out, re.M)
    if m:
        return {"listed": int(m[1])}
    return {}


def steps(work, device):
    rows = []
    for line in read(os.path.join(work, "steps.tsv")).splitlines():
        name, status, rc, secs = line.split("\t")
        logs = os.path.join(work, "logs", name)
        out, err = read(logs + ".out"), read(logs + ".err")
        row = {"step": name, "status": status, "exit": rc, "seconds": float(secs)}
        if name.startswith("bench-") and "-tf32" in name and device == "cpu" and rc == "2":
            row["status"] = "refused (expected on the CPU)"
            row["message"] = err.strip().splitlines()[-1] if err.strip() else ""
        elif name.startswith(("bench-", "peer-")):
            row["result"] = last_json(out)
        elif name.startswith("test-"):
            row.update(tests_summary(out))
        if row["status"] in ("failed", "timeout"):
            row["error"] = "\n".join((err or out).strip().splitlines()[-5:])
        rows.append(row)
    return rows


def training(work):
    report = read(os.path.join(work, "train-report.json"))
    if not report:
        return None
    r = json.loads(report)
    test = r.get("test", {})
    pick = lambda k: (test.get(k) or {}).get("mean")
    return {"iterations": r.get("iterations"), "tasks": test.get("tasks"),
            "accuracy_before": pick("accuracy_before"), "accuracy_after": pick("accuracy_after"),
            "loss_after": pick("loss_after")}


def mpi_compare(work):
    """The meta-test of 2 ranks through MPI against 1 rank (f64): the largest relative difference."""
    runs = [os.path.join(work, "runs", n, "report.json") for n in ("mpi1", "mpi2")]
    texts = [read(p) for p in runs]
    if not all(texts):
        return None
    a, b = (json.loads(t)["test"] for t in texts)
    diffs = []
    for key in ("loss_before", "loss_after"):
        x, y = a[key]["mean"], b[key]["mean"]
        diffs.append(abs(x - y) / max(abs(x), 1e-300))
    worst = max(diffs)
    return {"max_rel_diff": worst, "tolerance": 1e-8, "ok": worst <= 1e-8}


def fmt(v, spec=".1f"):
    return "—" if v is None or v != v else format(v, spec)


def markdown(report):
    lines = [f"# metaloop GPU check ({'dry run, CPU' if report['dry_run'] else report['device']})", ""]
    lines.append(f"Device: {report['gpu'] or report['device']}. {report['seconds']} s in all. "
                 f"Result: {'PASS' if report['ok'] else 'FAIL'}.")
    lines += ["", "## Benchmarks (tasks/s, peak memory MiB)", "",
              "| workload | switches | metaloop tasks/s | peak MiB | " +
              " | ".join(f"{p} tasks/s | {p} MiB" for p in PEERS) + " |",
              "|---|---|---|---|" + "---|---|" * len(PEERS)]
    peers = {}
    for s in report["steps"]:
        if s["step"].startswith("peer-") and s.get("result"):
            r = s["result"]
            peers[(r["peer"], r["workload"])] = r
    for s in report["steps"]:
        if not s["step"].startswith("bench-"):
            continue
        r = s.get("result") or {}
        workload = r.get("workload") or s["step"].split("-", 1)[1].rsplit("-", 1)[0]
        switches = s["step"].rsplit("-", 1)[1]
        if not r:
            lines.append(f"| {workload} | {switches} | {s['status']} | | " + " | " * (2 * len(PEERS)))
            continue
        cells = []
        for p in PEERS:
            q = peers.get((p, r["workload"]))
            cells += [fmt(q.get("tasks_per_s")) if q else "—", fmt(q.get("peak_mib"), ".0f") if q else "—"]
        lines.append(f"| {r['workload']} | {switches} | {fmt(r.get('tasks_per_s'))} | "
                     f"{fmt(r.get('peak_mib'), '.0f')} | " + " | ".join(cells) + " |")
    t = report["training"]
    lines += ["", "## Training on generated Omniglot-layout data", ""]
    if t:
        lines.append(f"{t['iterations']} iterations; meta-test over {t['tasks']} tasks: accuracy "
                     f"{fmt(t['accuracy_before'], '.3f')} before adaptation, "
                     f"{fmt(t['accuracy_after'], '.3f')} after.")
    else:
        lines.append("No report (see the train step).")
    m = report["mpi"]
    lines += ["", "## Two ranks on one device through MPI (f64 sinusoid)", ""]
    lines.append(f"max relative difference to one rank {m['max_rel_diff']:.2e} (tolerance 1e-8): "
                 f"{'ok' if m['ok'] else 'FAIL'}" if m else "No comparison (see the mpi steps).")
    lines += ["", "## Steps", "", "| step | status | exit | s | detail |", "|---|---|---|---|---|"]
    for s in report["steps"]:
        detail = ""
        if "passed" in s:
            detail = f"{s['passed']} passed, {s['failed']} failed, {s['ignored']} ignored"
        elif "listed" in s:
            detail = f"{s['listed']} tests listed"
        elif s.get("error"):
            detail = s["error"].replace("\n", " ⏎ ").replace("|", "\\|")[:300]
        lines.append(f"| {s['step']} | {s['status']} | {s['exit']} | {s['seconds']} | {detail} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--dry-run", type=int, default=0)
    ap.add_argument("--seconds", type=int, default=0)
    a = ap.parse_args()
    rows = steps(a.work, a.device)
    passed = lambda s: s["status"] == "ok" or s["status"].startswith("refused (expected")
    report = {
        "device": a.device, "dry_run": bool(a.dry_run), "seconds": a.seconds,
        "gpu": read(os.path.join(a.work, "gpu.txt")).strip() or None,
        "steps": rows, "training": training(a.work), "mpi": mpi_compare(a.work),
    }
    report["ok"] = all(passed(s) for s in rows) and (report["mpi"] is None or report["mpi"]["ok"])
    with open(os.path.join(a.out, "gpu-report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(a.out, "gpu-report.md"), "w") as f:
        f.write(markdown(report))
    print(f"report: {'PASS' if report['ok'] else 'FAIL'} ({sum(map(passed, rows))}/{len(rows)} steps)")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
