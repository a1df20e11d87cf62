"""Tokenizing throughput: `prepare tokenize` against the straightforward script, same corpus and tokenizer.

    python -m bench.tokenize                 # >= 60 MB JSONL from ../shared/data, 3 alternating rounds
    python -m bench.tokenize reference CORPUS.jsonl TOKENIZER.json OUT.bin   # the baseline alone

The corpus: WikiText-2's validation and test articles (an article runs from a `` = Title = ``
line to the next) and Tiny Shakespeare cut into scenes of 30 speeches, one JSON object per
document, repeated until the file holds at least 60 MB. The tokenizer: a byte-level BPE
(16,384 ids, ``<|endoftext|>`` included) trained on one copy of those documents, saved as a
``tokenizer.json`` file that both sides load.

The baseline is the script a user would write: read the JSONL, ``Tokenizer.encode_batch``
over batches of 1000 documents, the end-of-text id after each, uint16 written to one file.
Ours is ``python -m lm_lightning.prepare tokenize CORPUS out=DIR tokenizer=bpe
tokenizer_path=... shard_tokens=10M progress=true`` with 1 and 2 workers. Each command is a
fresh process timed from outside (start-up included): wall seconds, CPU seconds (user +
system of the process and the workers it waited for, from ``os.wait4``), and the resident
memory of the process tree sampled every 0.25 s while it runs (the peak, and its value at a
quarter and at three quarters of the run: flat means no growth with the corpus). The commands
run in turn, baseline first, ``rounds`` times; medians are reported. Both sides must produce
the same number of tokens.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MIN_BYTES = 60 << 20

REFERENCE = '''
import json, sys
import numpy as np
from tokenizers import Tokenizer

corpus, tok_file, out = sys.argv[1:4]
tok = Tokenizer.from_file(tok_file)
eot = tok.token_to_id("<|endoftext|>")
total = 0
with open(corpus) as fh, open(out, "wb") as dst:
    def flush(docs):
        global total
        ids = []
        for enc in tok.encode_batch(docs):
            ids.extend(enc.ids)
            ids.append(eot)
        np.array(ids, dtype=np.uint16).tofile(dst)
        total += len(ids)
    docs = []
    for line in fh:
        docs.append(json.loads(line)["text"])
        if len(docs) == 1000:
            flush(docs)
            docs = []
    if docs:
        flush(docs)
print(json.dumps({"tokens": total}))
'''


def documents() -> list[str]:
    """WikiText-2 articles (validation, test) and Tiny Shakespeare scenes of 30 speeches."""
    from lm_lightning.data.documents import is_article_heading

    docs: list[str] = []
    for split in ("valid", "test"):
        cur: list[str] = []
        for row in (SHARED / "wikitext-2" / f"{split}.txt").read_text(encoding="utf-8").splitlines(keepends=True):
            if is_article_heading(row) and any(r.strip() for r in cur):
                docs.append("".join(cur))
                cur = []
            cur.append(row)
        if any(r.strip() for r in cur):
            docs.append("".join(cur))
    speeches = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").split("\n\n")
    docs += ["\n\n".join(speeches[i:i + 30]) for i in range(0, len(speeches), 30)]
    return docs


def build(work: Path) -> tuple[Path, Path, int]:
    from lm_lightning.data.tokenizers import save_bpe_file, train_bpe

    docs = documents()
    corpus = work / "corpus.jsonl"
    lines = [json.dumps({"text": d}) + "\n" for d in docs]
    size = 0
    with open(corpus, "w") as fh:
        while size < MIN_BYTES:
            for line in lines:
                fh.write(line)
            size = fh.tell()
    tok_file = work / "tokenizer.json"
    save_bpe_file(train_bpe(iter(docs), 16384), tok_file)
    return corpus, tok_file, len(docs)


def timed(cmd: list[str]) -> dict:
    """Wall and CPU seconds of a fresh process, and its process tree's RSS sampled as it runs."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    samples: list[tuple[float, int]] = []
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)])
            samples.append((time.perf_counter() - t0, rss))
        except psutil.Error:
            pass
        time.sleep(0.25)
    # poll() reaped the child; its rusage comes from the kernel's accounting of reaped children.
    wall = time.perf_counter() - t0
    out = proc.stdout.read().decode()
    if proc.returncode:
        raise RuntimeError(f"{cmd} exited {proc.returncode}")
    return {"wall": wall, "samples": samples, "stdout": out}


def run_cpu(cmd: list[str]) -> dict:
    """`timed` plus CPU seconds, taken from RUSAGE_CHILDREN before and after (one child at a time)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = timed(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    s = r.pop("samples")
    mbs = [b / 2**20 for _, b in s]
    r["rss_peak_mb"] = max(mbs) if mbs else 0.0
    r["rss_q1_mb"] = mbs[len(mbs) // 4] if mbs else 0.0
    r["rss_q3_mb"] = mbs[3 * len(mbs) // 4] if mbs else 0.0
    return r


def measure(rounds: int = 3) -> dict:
    work = Path(tempfile.mkdtemp(prefix="lm_bench_tokenize_"))
    try:
        corpus, tok_file, n_docs = build(work)
        ref_script = work / "reference.py"
        ref_script.write_text(REFERENCE)
        cmds = {"reference": [sys.executable, str(ref_script), str(corpus), str(tok_file), str(work / "ref.bin")]}
        for w in (1, 2):
            cmds[f"ours_w{w}"] = [sys.executable, "-m", "lm_lightning.prepare", "tokenize", str(corpus),
                                  f"out={work / f'w{w}'}", "tokenizer=bpe", f"tokenizer_path={tok_file}",
                                  "shard_tokens=10M", f"workers={w}", "progress=true"]
        runs: dict[str, list[dict]] = {k: [] for k in cmds}
        tokens: dict[str, int] = {}
        for _ in range(rounds):
            for name, cmd in cmds.items():
                if name != "reference":
                    subprocess.run(["rm", "-rf", str(work / f"w{name[-1]}")], check=True)
                r = run_cpu(cmd)
                last = json.loads(r.pop("stdout").strip().splitlines()[-1])
                tokens[name] = last["tokens"] if name == "reference" else last["tokens"]["train"]
                runs[name].append(r)
        if len(set(tokens.values())) != 1:
            raise RuntimeError(f"token counts differ: {tokens}")
        ref_bytes = (work / "ref.bin").read_bytes()
        ours = b"".join(p.read_bytes() for p in sorted((work / "w1").glob("train_*.bin")))
        same = ours == ref_bytes and ours == b"".join(p.read_bytes() for p in sorted((work / "w2").glob("train_*.bin")))
        med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
        for name, m in med.items():
            m["tokens_per_s"] = tokens[name] / m["wall"]
            m["walls"] = [round(r["wall"], 2) for r in runs[name]]
        return {"corpus_mb": round(corpus.stat().st_size / 2**20, 1), "documents": n_docs, "rounds": rounds,
                "tokens": tokens["reference"], "identical_bytes": same, "load_avg": os.getloadavg()[0],
                "cores": os.cpu_count(), "results": med}
    finally:
        subprocess.run(["rm", "-rf", str(work)])


def render(r: dict) -> list[str]:
    ref = r["results"]["reference"]
    out = ["## 7. Tokenizing a corpus (`prepare tokenize`)", "",
           f"A {r['corpus_mb']} MB JSONL corpus (WikiText-2 articles and Tiny Shakespeare scenes from `../shared/data`, "
           f"{r['documents']} documents repeated), a 16,384-id BPE `tokenizer.json`; {r['tokens']:,} tokens on each "
           f"side, byte-identical: {r['identical_bytes']}. Baseline: the plain script (`encode_batch` over 1000 "
           "documents, end-of-text appended, uint16 written). Ours writes 10M-token shards with sidecars, a "
           "resumable plan and a progress line. Whole processes, start-up included; medians of "
           f"{r['rounds']} alternating rounds. Load average {r['load_avg']:.1f} on {r['cores']} cores when it ended: "
           "with other jobs on the machine the wall times spread widely (per-run walls in `bench/cpu_results.json`), "
           "CPU seconds are the steadier figure.",
           "", "| command | wall s | CPU s | tokens/s | RSS at 1/4, 3/4 of the run, peak (MB) | speed vs baseline (its wall / this wall) |",
           "|---|---|---|---|---|---|"]
    for name, label in (("reference", "baseline script"), ("ours_w1", "`prepare tokenize workers=1`"),
                        ("ours_w2", "`prepare tokenize workers=2`")):
        m = r["results"][name]
        out.append(f"| {label} | {m['wall']:.1f} | {m['cpu']:.1f} | {m['tokens_per_s']:,.0f} | "
                   f"{m['rss_q1_mb']:.0f}, {m['rss_q3_mb']:.0f}, {m['rss_peak_mb']:.0f} | "
                   f"**{ref['wall'] / m['wall']:.2f}x** |")
    return out + [""]


def main() -> None:
    if sys.argv[1:2] == ["reference"]:
        sys.argv = [sys.argv[0], *sys.argv[2:]]
        exec(compile(REFERENCE, "reference", "exec"), {"__name__": "__main__"})
        return
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    r = measure(rounds)
    print(json.dumps(r, indent=1))
    print("\n".join(render(r)))


if __name__ == "__main__":
    main()
