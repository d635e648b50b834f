"""Classic baselines for the experiment suite, on the same splits fpt uses.

  nearest-neighbour --train A.ts --test B.ts
      1-NN with Euclidean distance over the cases, padded with zeros to the longest (classes).
  ridge --train A.ts --test B.ts
      Ridge regression on the raw steps (standardised by the training cases), its penalty chosen
      by leave-one-out error on the training cases.
  holt-winters --series S.csv --context L --horizon H --season M [--test-fraction F --valid-fraction V]
      Additive Holt-Winters (statsmodels) on fpt's forecasting test windows: missing values
      interpolated linearly, the test part the last F of the series and the validation part the V
      before it (each at least a horizon), a forecast of H steps from every test window's start by
      a model fitted (parameters and initial states) on all the series before that start. The
      seasonal-naive forecast of the same windows is reported beside it.

Each prints one JSON object: {"name", "metric", "test", "metrics": {...}}. Uses numpy; holt-winters
also statsmodels (`make experiment` installs it).
"""

import argparse
import csv
import json

import numpy as np


def read_ts(path):
    """Cases (each [steps, channels]) and labels (strings) of a UCR/UEA .ts file."""
    cases, labels = [], []
    in_data = False
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *channels, label = line.split(":")
        cases.append(np.array([[float(v) for v in c.split(",")] for c in channels]).T)
        labels.append(label)
    return cases, labels


def padded(cases, steps):
    out = np.zeros((len(cases), steps * cases[0].shape[1]))
    for i, c in enumerate(cases):
        out[i, : c.size] = c.reshape(-1)
    return out


def nearest_neighbour(a):
    train, y_train = read_ts(a.train)
    test, y_test = read_ts(a.test)
    steps = max(c.shape[0] for c in train + test)
    x, q = padded(train, steps), padded(test, steps)
    d = (q**2).sum(1)[:, None] - 2 * q @ x.T + (x**2).sum(1)[None, :]
    predicted = [y_train[j] for j in d.argmin(1)]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, y_test)]))
    return {"name": "1-NN Euclidean", "metric": "accuracy", "test": accuracy, "metrics": {"accuracy": accuracy}}


def ridge(a):
    train, y_train = read_ts(a.train)
    test, y_test = read_ts(a.test)
    x, q = np.stack([c.reshape(-1) for c in train]), np.stack([c.reshape(-1) for c in test])
    y, y_test = np.array(y_train, float), np.array(y_test, float)
    mean, std = x.mean(0), x.std(0) + 1e-12
    x, q = (x - mean) / std, (q - mean) / std
    x1, q1 = np.hstack([x, np.ones((len(x), 1))]), np.hstack([q, np.ones((len(q), 1))])

    def fit(alpha):
        penalty = alpha * np.eye(x1.shape[1])
        penalty[-1, -1] = 0.0
        inverse = np.linalg.inv(x1.T @ x1 + penalty)
        hat = x1 @ inverse @ x1.T
        w = inverse @ x1.T @ y
        loo = (y - x1 @ w) / (1 - np.diag(hat))
        return float(np.mean(loo**2)), w

    alphas = np.logspace(-8, 3, 45)
    best = min(alphas, key=lambda al: fit(al)[0])
    predicted = q1 @ fit(best)[1]
    rmse = float(np.sqrt(np.mean((predicted - y_test) ** 2)))
    r2 = float(1 - np.sum((predicted - y_test) ** 2) / np.sum((y_test - y_test.mean()) ** 2))
    return {"name": f"ridge (alpha {best:.2g} by leave-one-out)", "metric": "rmse", "test": rmse, "metrics": {"rmse": rmse, "r2": r2}}


def read_series(path):
    """The one value column of a CSV series (a date column skipped), gaps interpolated."""
    rows = list(csv.reader(open(path, encoding="utf-8")))
    header, rows = rows[0], [r for r in rows[1:] if r]
    value = next(j for j, h in enumerate(header) if "date" not in h.lower() and "time" not in h.lower())
    y = np.array([float(r[value]) if r[value] not in ("", "NA", "NaN", "nan") else np.nan for r in rows])
    known = ~np.isnan(y)
    y[~known] = np.interp(np.flatnonzero(~known), np.flatnonzero(known), y[known])
    return y


def holt_winters(a):
    import warnings

    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    warnings.simplefilter("ignore")  # convergence notes on some windows; the forecast is used as is

    y = read_series(a.series)
    t, h, m = len(y), a.horizon, a.season
    part = lambda f: max(round(t * f), h) if f > 0 else 0
    n_valid, n_test = part(a.valid_fraction), part(a.test_fraction)
    test_start = t - n_test
    model = lambda history: ExponentialSmoothing(history, trend="add", seasonal="add", seasonal_periods=m, initialization_method="estimated")
    errors, naive_errors = [], []
    for start in range(test_start, t - h + 1):
        forecast = model(y[:start]).fit().forecast(h)
        truth = y[start : start + h]
        errors.append(np.abs(forecast - truth))
        naive = np.array([y[start - m + (k % m)] for k in range(h)])
        naive_errors.append(np.abs(naive - truth))
    mae, naive_mae = float(np.mean(errors)), float(np.mean(naive_errors))
    return {
        "name": "Holt-Winters (additive, statsmodels)",
        "metric": "mae",
        "test": mae,
        "metrics": {"mae": mae, "naive_mae": naive_mae, "mase": mae / naive_mae, "windows": len(errors)},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="baseline", required=True)
    for name in ("nearest-neighbour", "ridge"):
        s = sub.add_parser(name)
        s.add_argument("--train", required=True)
        s.add_argument("--test", required=True)
    s = sub.add_parser("holt-winters")
    s.add_argument("--series", required=True)
    s.add_argument("--context", type=int, required=True)
    s.add_argument("--horizon", type=int, required=True)
    s.add_argument("--season", type=int, required=True)
    s.add_argument("--test-fraction", type=float, default=0.2)
    s.add_argument("--valid-fraction", type=float, default=0.1)
    a = p.parse_args()
    run = {"nearest-neighbour": nearest_neighbour, "ridge": ridge, "holt-winters": holt_winters}[a.baseline]
    print(json.dumps(run(a)))


if __name__ == "__main__":
    main()
