"""Compare `fpt train` settings by a nested cross-validation on a .ts training file alone.

  nested_cv.py --train A_TRAIN.ts --settings SETTINGS.json [--folds 4] [--seeds 0,1,2]
               [--fpt PATH] -- ARGS...

SETTINGS.json is a JSON object: {"name": [extra fpt train arguments], ...}.

The training file's cases are dealt into `--folds` stratified folds (as `patch_cv.py` deals them).
For every setting, fold and seed, `fpt train ARGS <extra args> --seed S` runs on the fold's
complement, so that the run's own protocol (its validation split, its refit) happens inside those
cases, and the kept adapter is scored on the fold, passed as `--test`. A setting's extra arguments
follow ARGS, and fpt takes a repeated option's last value, so a setting may override any of them
(`--task`, `--lr`). No test data is read.

Besides each run's accuracy on its fold, the seeds' adapters of a fold are combined as an ensemble
would be (their class probabilities from `fpt predict`, averaged), to tell how much of the spread
over seeds averaging would take out.

Prints a Markdown table (setting, mean accuracy of the single runs, of the seed ensembles, each
run's) and then one JSON object: {"chosen": name, "single": {...}, "ensemble": {...}}, the chosen
setting being the first of the best mean single-run accuracy.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from patch_cv import cv_parser, fold_files, parse_cv, split_ts


def case_input(case):
    """A .ts case line's input as fpt predict reads it: steps of one value per channel."""
    channels = case.rsplit(":", 1)[0].split(":")
    steps = zip(*(c.split(",") for c in channels))
    return {"input": [[float(v) for v in step] for step in steps]}


def run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()


def class_names(header):
    """The class names a .ts header declares, in order: the adapter's label map keeps that order."""
    line = next(h for h in header if h.strip().lower().startswith("@classlabel"))
    return line.split()[2:]


def fold_scores(fpt, args, train, valid, seeds, out):
    """Each seed's accuracy on the fold, and its seeds' averaged probabilities' accuracy."""
    header, cases = split_ts(valid)
    names = class_names(header)
    labels = [case.rsplit(":", 1)[1].strip() for case in cases]
    inputs = out / "inputs.jsonl"
    inputs.write_text("".join(json.dumps(case_input(c)) + "\n" for c in cases), encoding="utf-8")
    single, summed = [], [[0.0] * len(names) for _ in cases]
    for seed in seeds:
        adapter = out / f"s{seed}.safetensors"
        cmd = [fpt, "train", *args, "--train", str(train), "--test", str(valid), "--seed", str(seed), "--out", str(adapter)]
        single.append(json.loads(run([*cmd, "--log-json", "--quiet"])[-1])["test_accuracy"])
        for i, line in enumerate(run([fpt, "predict", "--adapter", str(adapter), "--input", str(inputs)])):
            summed[i] = [a + b for a, b in zip(summed[i], json.loads(line)["probabilities"])]
    chosen = [names[max(range(len(names)), key=s.__getitem__)] for s in summed]
    ensemble = sum(c == label for c, label in zip(chosen, labels)) / len(labels)
    return single, ensemble


def main():
    p = cv_parser(__doc__)
    p.add_argument("--settings", required=True, help='a JSON file: {"name": [extra fpt train arguments], ...}')
    p.add_argument("--seeds", default="0,1,2")
    a, args = parse_cv(p)
    seeds = [int(s) for s in a.seeds.split(",")]
    settings = json.loads(Path(a.settings).read_text(encoding="utf-8"))
    single, ensemble = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folds = fold_files(a.train, a.folds, tmp)
        for n, (name, extra) in enumerate(settings.items()):
            single[name], ensemble[name] = [], []
            for f, (train, valid) in enumerate(folds):
                out = tmp / f"{n}-{f}"
                out.mkdir()
                s, e = fold_scores(a.fpt, [*args, *extra], train, valid, seeds, out)
                single[name] += s
                ensemble[name].append(e)
            print(f"{name}: {100 * sum(single[name]) / len(single[name]):.1f}%", file=sys.stderr, flush=True)
    mean = {k: sum(v) / len(v) for k, v in single.items()}
    print(f"| setting | mean accuracy | ensemble of {len(seeds)} seeds | runs (fold x seed) |\n|---|---|---|---|")
    for k, v in single.items():
        e = sum(ensemble[k]) / len(ensemble[k])
        print(f"| {k} | {100 * mean[k]:.1f}% | {100 * e:.1f}% | {', '.join(f'{100 * x:.0f}' for x in v)} |")
    print(json.dumps({"chosen": max(mean, key=mean.get), "single": single, "ensemble": ensemble}))


if __name__ == "__main__":
    main()
