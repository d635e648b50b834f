"""Choose a time-series patch size by k-fold cross-validation on the training file alone.

  patch_cv.py --train A_TRAIN.ts --patches 8:4,32:16,64:32,128:64,251 [--folds 4] [--fpt PATH] -- ARGS...

Splits the cases of the training file into `--folds` folds, stratified by class (cases shuffled
within each class by a fixed seed, then dealt out in turn), and for every patch size (`size` or
`size:stride`) trains `fpt train --task sequence_classification` on each fold's complement with
the fold as its validation file. ARGS (model, steps, learning rate, seed...) are passed to every
run unchanged. A fold's score is its validation accuracy at the run's last step: a fixed budget,
so that no fold's score is the best of many noisy evaluations. No test data is read.

Prints a Markdown table (patch size, mean accuracy, each fold's) and then one JSON object:
{"chosen": "size:stride", "scores": {"size:stride": [fold accuracies]}}, the chosen patch size
being the first of the best mean.
"""

import argparse
import collections
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path


def split_ts(path):
    """The header lines (through `@data`) and the case lines of a .ts file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().lower() == "@data") + 1
    return lines[:start], [line for line in lines[start:] if line.strip()]


def stratified_folds(cases, k, seed=0):
    """Fold index -> case lines: each class's cases shuffled, then dealt out to the folds in turn."""
    by_label = collections.defaultdict(list)
    for case in cases:
        by_label[case.rsplit(":", 1)[1]].append(case)
    rng = random.Random(seed)
    folds = collections.defaultdict(list)
    for _, members in sorted(by_label.items()):
        rng.shuffle(members)
        for i, case in enumerate(members):
            folds[i % k].append(case)
    return [folds[f] for f in range(k)]


def fold_files(train, k, out):
    """Writes fold f's training and validation .ts files under `out`; returns their paths."""
    header, cases = split_ts(train)
    folds = stratified_folds(cases, k)
    paths = []
    for f in range(k):
        rest = [case for g in range(k) if g != f for case in folds[g]]
        t, v = out / f"f{f}-train.ts", out / f"f{f}-valid.ts"
        t.write_text("\n".join(header + rest) + "\n", encoding="utf-8")
        v.write_text("\n".join(header + folds[f]) + "\n", encoding="utf-8")
        paths.append((t, v))
    return paths


def final_accuracy(fpt, task, train, valid, out, args):
    """The validation accuracy at the last step of one `fpt train` run."""
    cmd = [fpt, "train", "--task", json.dumps(task), "--train", str(train), "--valid", str(valid), "--out", str(out), "--log-json", *args]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    return summary["valid_accuracy"]


def patch(spec):
    size, _, stride = spec.partition(":")
    return int(size), int(stride or size)


def cv_parser(doc):
    """The options every cross-validation script here takes: the training file, the folds, the
    fpt binary, and after `--` the arguments of every `fpt train` run."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--fpt", default="./target/release/fpt")
    p.add_argument("args", nargs=argparse.REMAINDER, help="-- then the arguments of every fpt train run")
    return p


def parse_cv(p):
    """The parsed options, and the `fpt train` arguments without their leading `--`."""
    a = p.parse_args()
    return a, a.args[1:] if a.args[:1] == ["--"] else a.args


def main():
    p = cv_parser(__doc__)
    p.add_argument("--patches", required=True, help="comma-separated size or size:stride")
    a, args = parse_cv(p)
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folds = fold_files(a.train, a.folds, tmp)
        for size, stride in map(patch, a.patches.split(",")):
            task = {"type": "sequence_classification", "patch_size": size, "stride": stride}
            scores[f"{size}:{stride}"] = [
                final_accuracy(a.fpt, task, t, v, tmp / f"{size}-{f}.safetensors", args) for f, (t, v) in enumerate(folds)
            ]
    mean = {k: sum(v) / len(v) for k, v in scores.items()}
    print("| patch:stride | mean accuracy | folds |\n|---|---|---|")
    for k, v in scores.items():
        print(f"| {k} | {100 * mean[k]:.1f}% | {', '.join(f'{100 * x:.1f}' for x in v)} |")
    print(json.dumps({"chosen": max(mean, key=mean.get), "scores": scores}))


if __name__ == "__main__":
    main()
